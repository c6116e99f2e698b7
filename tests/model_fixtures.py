"""Helpers for the model tests: the real recordings, the real labels, model copies.

The model fixtures themselves (``tiny_model_dir``, ``full_model_dir``) are in conftest.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

# the bundled copies of /work/shared/audio (byte-identical), so the tests run on any checkout
AUDIO = Path(__file__).resolve().parent.parent / "data" / "recordings"
# the real model's config as shipped in the package; test_models pins its sha256 to the
# original's (MIT/ast-finetuned-audioset-10-10-0.4593, as in /work/shared/models)
SHARED_CONFIG = Path(__file__).resolve().parent.parent / "agent" / "data" / "ast-audioset" / "config.json"
RECORDING = AUDIO / "S4A03895_20190522_060000.wav"  # SM4, 22 kHz, 10 s, dawn chorus
#: Audacity label track of spinetail_20180919_160000.wav (CRER: Cranioleuca erythrops songs)
ANNOTATIONS = AUDIO / "spinetail_annotations.txt"

def shared_labels() -> list[str]:
    """The 527 AudioSet labels of the real model's config, in index order."""
    id2label = json.loads(SHARED_CONFIG.read_text())["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def read_recording(path: Path = RECORDING) -> tuple[np.ndarray, int]:
    """A real recording as float32 mono, full scale ±1.0, and its rate (Hz)."""
    x, rate = sf.read(path, dtype="float32")
    return x, rate


def copy_model(src: Path, dst: Path) -> Path:
    """Copy a model directory (to modify it without touching the shared one)."""
    shutil.copytree(src, dst)
    return dst


def crer_songs() -> list[tuple[float, float]]:
    """(start, end) s of every CRER song in the Audacity label track."""
    songs = []
    for line in ANNOTATIONS.read_text().splitlines():
        start, end, label = (line.split("\t") + ["", ""])[:3]
        if label.strip() == "CRER":
            songs.append((float(start), float(end)))
    return songs
