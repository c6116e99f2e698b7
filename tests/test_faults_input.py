"""Fault injection, bad input (issue 6, item 7): the real agent process, a real SQLite outbox,
a real PostgreSQL, real recordings and the real model code path (tiny ONNX scaffold).

Every case starts from a queue that already holds windows of a real recording (made once by a
first run, then copied for each case) and ends by checking that each of those windows is still
there, unchanged. A case either ends with one clear message naming what is wrong (and the
file, key or server), a non-zero sysexits code and no traceback, or, where the input is valid
but extreme, with normal processing.

* Configs: generated documents (hypothesis, derandomized) through ``parse_config`` and
  ``load_config`` in-process raise nothing but ``ConfigError``; generated bad configs, raw
  bytes and hostile files through the real CLI exit 78.
* Audio (``capture.type = "file"``): what the agent replays is decided in
  :class:`agent.filesource.FileSource` (WAV/FLAC containers by content; any encoding libsndfile
  decodes in them, converted to float32; first channel; >= 8 kHz). Unreadable files are
  refused before anything runs (exit 66); damaged files (cut off, NaN/inf samples, decoding
  errors) are replayed up to the problem, the replay goes on with the next file, and the run
  exits 66 naming them; silence and full-scale audio are processed and flagged.
* Server: a schema of another version and wrong credentials: the running agent keeps
  capturing and queueing and says why it cannot sync; ``sync --once`` exits 75; once the
  server is fixed everything queued arrives exactly once.
* A read-only state directory (a read-only tmpfs: root ignores file modes): exit 74 naming
  the path; the queue made earlier on it is intact once it is writable again.

Figures go to the fault results file as ``bad_input``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timezone
from pathlib import Path

import numpy as np
import psycopg
import pytest
import soundfile as sf
import soxr
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agent.config import (
    AlsaCaptureConfig,
    ArecordCaptureConfig,
    Config,
    FileCaptureConfig,
    OnnxClassifierConfig,
    TorchClassifierConfig,
    load_config,
    parse_config,
)
from agent.errors import ConfigError
from agent.sync import OLDEST_SERVER_SCHEMA, known_schema_version
from tests.audio import RECORDINGS
from tests.faultkit import AgentProcess, check_delivery, quick_check, unsynced_count
from tests.test_run import agent, write_config

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 240  # s, one agent process on a shared 2-core machine
WINDOW_S = 2.0  # window length of the bad-audio runs: several windows from one 10 s recording
REC = RECORDINGS / "S4A03895_20190522_060000.wav"  # Song Meter SM4, 22 kHz, 10 s

#: One entry per case run, for the results file (see ``_record_results``).
CASES: list[dict] = []


# ---------------------------------------------------------------------------------------------
# the pre-filled queue and the checks every case ends with


@pytest.fixture(scope="module", autouse=True)
def _record_results(fault_results):
    """Write the module's cases to the fault results file once they have run."""
    yield
    if CASES:
        fault_results.record(
            "bad_input", cycles=len(CASES), faults_injected=len(CASES),
            windows_sent=sum(c.get("delivered", 0) for c in CASES),
            lost=sum(c["lost"] for c in CASES), duplicated=sum(c.get("duplicated", 0) for c in CASES),
            worst_recovery_s=None, cases=CASES)


def snapshot(db: Path) -> dict[str, dict]:
    """Every window row of an outbox (read-only) as ``{column: value}``, its detections under
    ``"detections"``, by window key."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        rows = {r["key"]: {**dict(r), "detections": []} for r in con.execute("SELECT * FROM windows")}
        for det in con.execute("SELECT * FROM detections ORDER BY window_key, rank"):
            rows[det["window_key"]]["detections"].append(tuple(det))
    finally:
        con.close()
    return rows


def start(row: dict) -> datetime:
    """A stored window's start time (UTC)."""
    return datetime.fromisoformat(row["start_time"])


@pytest.fixture(scope="module")
def prefilled(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, dict]]:
    """A queue holding 4 unsynced windows of two real recordings (a first run, no DSN), and
    its snapshot. Read-only: each case works on a copy (:func:`queue_copy`)."""
    d = tmp_path_factory.mktemp("prefill")
    cfg = write_config(
        d / "agent.toml",
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_0[0-3]*.wav")},
        windows={"length_s": 5.0},
        classifier={"type": "onnx", "model": str(tiny_model_dir)},
        store={"path": str(d / "queue.db")},
    )
    r = agent("run", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr
    rows = snapshot(d / "queue.db")
    assert len(rows) == 4 and all(row["status"] == "classified" and row["detections"] for row in rows.values())
    return d / "queue.db", rows


def queue_copy(prefilled, state: Path) -> Path:
    """A copy of the pre-filled queue in ``state`` (created), for one case."""
    state.mkdir(parents=True, exist_ok=True)
    db = state / "queue.db"
    shutil.copyfile(prefilled[0], db)
    return db


def missing_prefilled(prefilled, db: Path, *, synced: bool = False) -> int:
    """How many pre-filled windows are gone from ``db`` (0 expected); asserts the rest are unchanged
    (or, with ``synced``, unchanged but for their sync columns) and the file is intact."""
    assert quick_check(db) == "ok"
    now = snapshot(db)
    before = prefilled[1]
    gone = [k for k in before if k not in now]
    sync_columns = ("sync_id", "synced_at")
    for k in before:
        if k in now:
            if synced:
                assert now[k]["synced_at"] is not None, k
                assert ({c: v for c, v in now[k].items() if c not in sync_columns}
                        == {c: v for c, v in before[k].items() if c not in sync_columns}), f"window {k} changed"
            else:
                assert now[k] == before[k], f"pre-filled window {k} changed"
    return len(gone)




def assert_clean_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """Exit ``code``, one ``error:`` message holding every needle, no traceback; returns the message."""
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert r.returncode == code, (r.returncode, r.stderr[-3000:])
    assert r.stderr.count("soundscape-agent: error:") == 1, r.stderr[-3000:]
    message = r.stderr.split("soundscape-agent: error:", 1)[1].strip()
    for needle in needles:
        assert needle in message, f"{needle!r} not in the message:\n{message}"
    return message


def record_case(name: str, r: subprocess.CompletedProcess | None, lost: int, **extra) -> None:
    """Keep one case for the results file: its exit code and first message line."""
    message = ""
    if r is not None and "soundscape-agent: error:" in r.stderr:
        message = r.stderr.split("soundscape-agent: error:", 1)[1].strip().splitlines()[0]
    CASES.append({"case": name, "exit": None if r is None else r.returncode, "message": message[:300],
                  "lost": lost, **extra})


def real(path: Path = REC) -> tuple[np.ndarray, int]:
    """A real recording as float32 samples, shape (n,), and its rate, Hz."""
    x, rate = sf.read(str(path), dtype="float32")
    return x, rate


def run_replay(tmp_path: Path, prefilled, model: Path, path: Path,
               **sections) -> tuple[subprocess.CompletedProcess, Path]:
    """``run`` replaying ``path`` (2 s windows, no DSN) on a copy of the pre-filled queue."""
    db = queue_copy(prefilled, tmp_path / "state")
    cfg = write_config(
        tmp_path / "agent.toml",
        capture={"type": "file", "path": str(path)},
        windows={"length_s": WINDOW_S},
        classifier={"type": "onnx", "model": str(model)},
        store={"path": str(db)},
        **sections,
    )
    return agent("run", "--config", str(cfg), timeout=RUN_TIMEOUT), db


def new_windows(prefilled, db: Path) -> list[dict]:
    """Window rows stored by the case (not pre-filled), oldest first."""
    rows = [r for k, r in snapshot(db).items() if k not in prefilled[1]]
    return sorted(rows, key=lambda r: (r["start_time"], r["key"]))


# ---------------------------------------------------------------------------------------------
# 1. configs: generated documents never crash, only ConfigError


def _section_keys() -> dict[str, list[str]]:
    out: dict[str, set[str]] = {name: set(type(getattr(Config(), name)).model_fields) for name in Config.model_fields}
    sources = (AlsaCaptureConfig, ArecordCaptureConfig, FileCaptureConfig)
    out["capture"] = set().union(*(m.model_fields for m in sources))
    out["classifier"] = set(TorchClassifierConfig.model_fields) | set(OnnxClassifierConfig.model_fields)
    return {k: sorted(v) for k, v in out.items()}


SECTION_KEYS = _section_keys()
_NAMES = sorted({k for keys in SECTION_KEYS.values() for k in keys} | set(SECTION_KEYS))
_STRINGS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "a\x00b", "/tmp/q\x00.db", "😀😀", "\u202e\u0301", "alsa", "arecord", "file",
                     "torch", "onnx", "gsm", "ethernet", "hann", "all", "parallel", "/", "/dev/null", "~", "*.wav",
                     "${CREDENTIALS_DIRECTORY}/x", "postgresql://u:p@[::1", "x" * 2000]),
)
_NUMBERS = st.one_of(
    st.integers(), st.floats(),
    st.sampled_from([0, -1, 1, 7, 2**31, 2**63, -(2**63) - 1, 10**20, 10**400, -(10**400), 1e308, -1e308,
                     5e-324, -0.0, math.inf, -math.inf, math.nan]),
    # beyond Python's int-to-text limit (4300 digits); built by a map, as hypothesis reprs sampled values
    st.sampled_from([4300, 5000]).map(lambda digits: 10**digits),
)
_SCALARS = st.one_of(st.booleans(), _NUMBERS, _STRINGS, st.dates(), st.times(),
                     st.datetimes(timezones=st.sampled_from([None, timezone.utc])))
_KEYS = st.one_of(st.sampled_from(_NAMES), st.text(max_size=16))
VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
                      max_leaves=10)


def _table(name: str):
    return st.dictionaries(st.one_of(st.sampled_from(SECTION_KEYS[name]), st.text(max_size=12)), VALUES, max_size=6)


_SECTION = st.sampled_from(sorted(SECTION_KEYS)).flatmap(lambda n: st.tuples(st.just(n), _table(n)))
#: Config documents: mostly real sections with real and unknown keys, any TOML value (wrong
#: types, out of range, NaN/inf, huge integers, unicode, NUL, nested tables and arrays), plus
#: stray top-level keys.
DOCS = st.lists(st.one_of(_SECTION, _SECTION, st.tuples(_KEYS, VALUES)), max_size=6).map(dict)

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(s: str) -> str:
    # JSON escapes are TOML basic-string escapes; TOML also forbids a literal DEL
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (datetime, date, time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(doc: dict) -> str:
    """A generated document as TOML text: tables for dict values, inline tables below them."""
    digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # render 10**5000 too: reading it back is the agent's problem
    try:
        lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
        for k, v in doc.items():
            if isinstance(v, dict):
                lines.append(f"[{_toml_key(k)}]")
                lines += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    finally:
        sys.set_int_max_str_digits(digits)
    return "\n".join(lines) + "\n"


def outcome(load) -> str:
    """``"valid"`` or ``"error"``; any exception other than ConfigError propagates (a crash).

    An error must be a clear message: non-empty, exit code 78, no line longer than 1000
    characters (a 100 kB value is not echoed back in full)."""
    try:
        cfg = load()
    except ConfigError as err:
        text = str(err)
        assert err.exit_code == 78 and err.message.strip()
        assert max(len(line) for line in text.splitlines()) <= 1000, text[:2000]
        event("ConfigError")
        return "error"
    assert isinstance(cfg, Config)
    event("valid config")
    return "valid"


_FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much, HealthCheck.large_base_example])


@settings(_FUZZ, max_examples=400)
@given(DOCS)
@example({"agent": {"device_id": 10**5000}})
@example({"store": {"path": "/tmp/q\x00.db"}})
@example({"capture": {"type": [1]}, "classifier": {"type": None}})
@example({"x" * 100_000: 1, "levels": {"gain_db": "x" * 100_000}})
@example({"capture": {"type": "x" * 100_000}})
@example({"indices": {"bi_flim_hz": [math.nan, 1.0], "fmax_hz": math.inf}, "sync": {"interval_s": math.nan}})
def test_generated_config_documents_raise_only_config_error(doc):
    """parse_config on generated documents: a Config or a ConfigError, never anything else."""
    outcome(lambda: parse_config(doc, "generated.toml"))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """A directory for the generated config files (module-scoped: hypothesis reruns the test)."""
    return tmp_path_factory.mktemp("fuzz")


@settings(_FUZZ, max_examples=200)
@given(doc=DOCS)
def test_generated_toml_files_raise_only_config_error(fuzz_dir, doc):
    """load_config on generated documents written as TOML files: a Config or a ConfigError."""
    path = fuzz_dir / "generated.toml"
    path.write_text(to_toml(doc), encoding="utf-8")
    outcome(lambda: load_config(path))


EXAMPLE = (ROOT / "config.example.toml").read_bytes()


def _splice(edits: list[tuple[int, int, bytes]]) -> bytes:
    data = EXAMPLE
    for at, cut, insert in edits:
        data = data[:at] + insert + data[at + cut:]
    return data


#: Raw bytes: random, and config.example.toml with bytes cut out and random bytes put in.
RAW = st.one_of(
    st.binary(max_size=400),
    st.lists(st.tuples(st.integers(0, len(EXAMPLE)), st.integers(0, 16), st.binary(max_size=16)),
             min_size=1, max_size=4).map(_splice),
)


@settings(_FUZZ, max_examples=300)
@given(RAW)
@example(b"\xff\xfe[agent]\n")
@example(b'[agent]\ndevice_id = "caf\xe9"\n')  # a config saved as Latin-1
@example(b"[classifier]\ntop_k = " + b"9" * 5000 + b"\n")
@example(b"x = " + b"[" * 2000 + b"]" * 2000 + b"\n")
def test_raw_bytes_and_mangled_example_raise_only_config_error(fuzz_dir, data):
    """load_config on bytes that are not UTF-8, not TOML, or a damaged example config."""
    path = fuzz_dir / "raw.toml"
    path.write_bytes(data)
    outcome(lambda: load_config(path))


def _invalid_for_sure(doc: dict) -> dict:
    """The document plus one unknown top-level key: never a valid config, so the CLI must stop
    at the config (exit 78) and never reach a capture device."""
    return {"zz_not_a_setting": 1, **doc}


def _rejected(data: bytes) -> bool:
    """True unless ``load_config`` accepts the bytes as a valid config (a crash counts as
    rejected: the CLI must then still exit 78)."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"soundscape-probe-{os.getpid()}.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except Exception:
        return True
    finally:
        path.unlink()
    return False


def assert_config_exit(r: subprocess.CompletedProcess, path: Path, *needles: str) -> str:
    """Exit 78, one error naming the config file, no traceback, a bounded message."""
    message = assert_clean_error(r, 78, str(path), *needles)
    assert len(r.stderr) < 20_000, r.stderr[:2000]
    return message


@settings(_FUZZ, max_examples=3, phases=[Phase.explicit, Phase.generate])  # no shrinking: a CLI run is ~2 s
@given(doc=DOCS.map(_invalid_for_sure), raw=RAW.filter(_rejected))
def test_generated_bad_configs_through_the_cli_exit_78(fuzz_dir, doc, raw):
    """The real CLI on generated bad configs and rejected raw bytes: exit 78, one message."""
    for name, body in (("doc.toml", to_toml(doc).encode()), ("raw.toml", raw)):
        path = fuzz_dir / name
        path.write_bytes(body)
        r = agent("run", "--config", str(path), timeout=RUN_TIMEOUT)
        record_case(f"config_generated_{name.split('.')[0]}", r, lost=0)
        assert_config_exit(r, path)


HOSTILE_CONFIGS = {
    "latin1_text": (b'[agent]\ndevice_id = "caf\xe9"\n', ("UTF-8",)),
    "huge_integer": (b"[classifier]\ntop_k = " + b"9" * 5000 + b"\n", ("too long",)),
    "deep_nesting": (b"x = " + b"[" * 2000 + b"]" * 2000 + b"\n", ("too deeply",)),
    "nul_in_store_path": (b'[store]\npath = "/tmp/q\\u0000.db"\n', ("store.path", "NUL")),
    "random_bytes": (np.random.default_rng(7).bytes(300), ()),
    "wrong_types": (b'[windows]\nlength_s = "ten"\n[sync]\nlink = 3\n[capture]\ntype = "file"\n',
                    ("windows.length_s", "sync.link", "capture.path")),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_hostile_config_files_through_the_cli_exit_78(tmp_path, case):
    """Config files that crashed the agent or could: exit 78 with a message naming the problem."""
    body, needles = HOSTILE_CONFIGS[case]
    path = tmp_path / "agent.toml"
    path.write_bytes(body)
    r = agent("run", "--config", str(path), timeout=RUN_TIMEOUT)
    record_case(f"config_{case}", r, lost=0)
    assert_config_exit(r, path, *needles)


def test_a_directory_given_as_config_exits_78(tmp_path):
    """--config naming a directory: exit 78, "cannot be read"."""
    r = agent("run", "--config", str(tmp_path), timeout=RUN_TIMEOUT)
    record_case("config_is_a_directory", r, lost=0)
    assert_config_exit(r, tmp_path, "cannot be read")


# ---------------------------------------------------------------------------------------------
# 2. audio: refused before anything runs


def _wav_bytes() -> bytes:
    return REC.read_bytes()


def _patched(offset: int, value: bytes):
    def build(d: Path) -> Path:
        raw = bytearray(_wav_bytes())
        raw[offset:offset + len(value)] = value
        (d / "patched.wav").write_bytes(bytes(raw))
        return d / "patched.wav"
    return build


def _write(name: str, data: bytes):
    def build(d: Path) -> Path:
        (d / name).write_bytes(data)
        return d / name
    return build


def _encoded(name: str, **kw):
    def build(d: Path) -> Path:
        x, rate = real(RECORDINGS / "spinetail_20180919_160000.wav")  # 44.1 kHz: an MP3 rate
        sf.write(str(d / name), x, rate, **kw)
        return d / name
    return build


def _resampled(name: str, rate: int, seconds: float = 10.0):
    def build(d: Path) -> Path:
        x, r0 = real()
        sf.write(str(d / name), soxr.resample(x, r0, rate)[: int(seconds * rate)], rate, subtype="PCM_16")
        return d / name
    return build


def _header_only(d: Path) -> Path:
    sf.write(str(d / "20190522_060000_header_only.wav"), np.zeros(0, np.float32), 22000, subtype="PCM_16")
    return d / "20190522_060000_header_only.wav"


#: name -> (builds the file in a directory, needles of the message). Every one: exit 66 at
#: start-up, before the model loads, nothing new queued.
REFUSED = {
    "random_bytes_named_wav": (_write("random.wav", np.random.default_rng(3).bytes(64_000)),
                               ("is not a WAV or FLAC file",)),
    "riff_header_then_garbage": (
        _write("riff.wav", b"RIFF\x50\xc3\x00\x00WAVE" + np.random.default_rng(4).bytes(50_000)),
        ("WAV header cannot be read",)),
    "unknown_wav_format_tag": (_patched(20, (0x4242).to_bytes(2, "little")), ("WAV header cannot be read", "fmt")),
    "zero_bit_pcm": (_patched(34, (0).to_bytes(2, "little")), ("encoding", "unimplemented format")),
    "cut_inside_the_header": (_write("cut.wav", _wav_bytes()[:30]), ("WAV header cannot be read",)),
    "empty_file": (_write("empty.wav", b""), ("empty (0 bytes)",)),
    "text_named_wav": (_write("notes.wav", b"recorder 3, site B: battery died at 04:10\n" * 40), ("a text file",)),
    "ogg_vorbis_named_wav": (_encoded("ogg.wav", format="OGG", subtype="VORBIS"), ("an Ogg file", "ffmpeg")),
    "mp3_named_wav": (_encoded("mp3.wav", format="MP3", subtype="MPEG_LAYER_III"), ("MP3", "ffmpeg")),
    "aiff_named_wav": (_encoded("aiff.wav", format="AIFF", subtype="PCM_16"), ("AIFF",)),
    "rate_below_8khz": (_resampled("4khz.wav", 4000), ("4000 Hz", "8000 Hz")),
    "header_only": (_header_only, ("holds no audio",)),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unreadable_audio_is_refused_before_anything_runs(tmp_path, prefilled, tiny_model_dir, case):
    """Not audio, not WAV/FLAC, an unreadable header or encoding, < 8 kHz, no samples: exit 66
    naming the file and the problem, before the model loads; the queue untouched."""
    build, needles = REFUSED[case]
    (tmp_path / "in").mkdir()
    path = build(tmp_path / "in")
    r, db = run_replay(tmp_path, prefilled, tiny_model_dir, path)
    lost = missing_prefilled(prefilled, db)
    record_case(case, r, lost, windows_new=len(new_windows(prefilled, db)))
    assert_clean_error(r, 66, str(path), *needles)
    assert "model:" not in r.stdout, "refused only after loading the model"
    assert lost == 0 and not new_windows(prefilled, db)


# ---------------------------------------------------------------------------------------------
# 2. audio: damaged files are replayed up to the damage, then the run exits 66


def _truncated(d: Path) -> Path:
    raw = _wav_bytes()
    keep = 44 + int(4.2 * 22000) * 2  # the header still declares 10 s
    (d / "S4A03895_20190522_060000.wav").write_bytes(raw[:keep])
    return d / "S4A03895_20190522_060000.wav"


def _with_nonfinite(name: str, subtype: str, *at: tuple[float, float]):
    def build(d: Path) -> Path:
        x, rate = real()
        x = x.astype(np.float64)
        for t, value in at:
            x[int(t * rate)] = value
        sf.write(str(d / name), x, rate, subtype=subtype)
        return d / name
    return build


def _truncated_flac(d: Path) -> Path:
    x, rate = real()
    full = d / "full.flac"
    sf.write(str(full), x, rate, format="FLAC")
    data = full.read_bytes()
    full.unlink()
    (d / "S4A03895_20190522_060000.flac").write_bytes(data[: len(data) // 2])
    return d / "S4A03895_20190522_060000.flac"


#: name -> (builds the file, windows stored before the damage, needles). 2 s windows.
DAMAGED = {
    "truncated_wav": (_truncated, 2, ("is cut off", "declares 10.00 s", "holds 4.20 s", "sox")),
    "nan_in_float_wav": (_with_nonfinite("S4A03895_20190522_060000_nan.wav", "FLOAT", (5.0, math.nan)), 2,
                         ("NaN or infinite sample at 5.00 s",)),
    "inf_in_double_wav": (_with_nonfinite("S4A03895_20190522_060000_inf.wav", "DOUBLE", (3.0, math.inf),
                                          (7.0, -math.inf)), 1, ("NaN or infinite sample at 3.00 s",)),
    "truncated_flac": (_truncated_flac, 2, ("failed at", "the rest of it was skipped")),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_audio_is_replayed_up_to_the_damage_then_exits_66(tmp_path, prefilled, tiny_model_dir, case):
    """A file that fails mid-replay: its windows before the damage are stored and stay queued
    with the pre-filled ones; then exit 66 naming the file, where and what."""
    build, expected, needles = DAMAGED[case]
    (tmp_path / "in").mkdir()
    path = build(tmp_path / "in")
    r, db = run_replay(tmp_path, prefilled, tiny_model_dir, path)
    lost = missing_prefilled(prefilled, db)
    stored = new_windows(prefilled, db)
    record_case(case, r, lost, windows_new=len(stored))
    assert_clean_error(r, 66, str(path), *needles)
    assert lost == 0
    # The windows read before the damage were analysed and stay queued, at their own times.
    assert len(stored) == expected, [row["start_time"] for row in stored]
    t0 = datetime(2019, 5, 22, 6, tzinfo=timezone.utc)
    assert [start(row) for row in stored] == [
        t0.replace(second=int(i * WINDOW_S)) for i in range(expected)]
    assert sum(ln.startswith("window") for ln in r.stdout.splitlines()) == expected


def test_a_damaged_file_among_good_ones_does_not_stop_the_others(tmp_path, prefilled, tiny_model_dir):
    """A directory: good, damaged (NaN at 5 s), good. Every good window and the damaged file's
    windows before the NaN are stored; the run exits 66 naming only the damaged file."""
    d = tmp_path / "in"
    d.mkdir()
    shutil.copyfile(RECORDINGS / "S4A03895_20190522_000000.wav", d / "S4A03895_20190522_000000.wav")
    bad = _with_nonfinite("S4A03895_20190522_030000.wav", "FLOAT", (5.0, math.nan))(d)
    shutil.copyfile(RECORDINGS / "S4A03895_20190522_060000.wav", d / "S4A03895_20190522_060000.wav")
    r, db = run_replay(tmp_path, prefilled, tiny_model_dir, d)
    lost = missing_prefilled(prefilled, db)
    stored = new_windows(prefilled, db)
    record_case("damaged_file_among_good_ones", r, lost, windows_new=len(stored))
    message = assert_clean_error(r, 66, str(bad), "NaN or infinite sample at 5.00 s")
    assert "000000.wav" not in message and "060000.wav" not in message
    assert lost == 0
    hours = [start(row).hour for row in stored]
    assert hours == [0] * 5 + [3] * 2 + [6] * 5  # the file after the damaged one was replayed too


# ---------------------------------------------------------------------------------------------
# 2. audio: valid encodings, extreme content


#: encoding -> (soundfile format, subtype, largest |LZeq difference| to the 16-bit original, dB).
#: The lossless ones must match to 0.01 dB: a wrong scale (24-bit read as 32-bit, unsigned
#: 8-bit read as signed) would be tens of dB off. The lossy ones add their quantisation noise.
ENCODINGS = {
    "PCM_U8": ("WAV", "PCM_U8", 3.0), "ULAW": ("WAV", "ULAW", 3.0), "ALAW": ("WAV", "ALAW", 3.0),
    "PCM_24": ("WAV", "PCM_24", 0.01), "PCM_32": ("WAV", "PCM_32", 0.01), "FLOAT": ("WAV", "FLOAT", 0.01),
    "DOUBLE": ("WAV", "DOUBLE", 0.01), "IMA_ADPCM": ("WAV", "IMA_ADPCM", 3.0), "MS_ADPCM": ("WAV", "MS_ADPCM", 3.0),
    "GSM610": ("WAV", "GSM610", 3.0), "FLAC": ("FLAC", "PCM_16", 0.01), "FLAC_24": ("FLAC", "PCM_24", 0.01),
    "WAVEX": ("WAVEX", "PCM_16", 0.01), "RF64": ("RF64", "PCM_16", 0.01), "W64": ("W64", "PCM_16", 0.01),
}


def test_every_supported_encoding_is_replayed_at_the_right_level(tmp_path, prefilled, tiny_model_dir):
    """One directory, one file per encoding (each stamped with its own hour), plus a stereo
    file (first channel = the recording, second = loud noise) and the minimum rate (8 kHz).
    Every file is processed (exit 0); each window's LZeq equals that of the same 2 s of the
    16-bit original."""
    d = tmp_path / "in"
    d.mkdir()
    x, rate = real()
    names = {"reference": 0}
    shutil.copyfile(REC, d / "ref_20190522_000000.wav")
    for i, (name, (fmt, subtype, _)) in enumerate(sorted(ENCODINGS.items()), start=1):
        names[name] = i
        ext = ".flac" if fmt == "FLAC" else ".wav"
        sf.write(str(d / f"{name}_20190522_{i:02d}0000{ext}"), x, rate, format=fmt, subtype=subtype)
    stereo_hour, low_hour = len(names), len(names) + 1
    noise = np.random.default_rng(5).uniform(-0.9, 0.9, len(x)).astype(np.float32)
    sf.write(str(d / f"stereo_20190522_{stereo_hour:02d}0000.wav"), np.stack([x, noise], axis=1), rate,
             subtype="PCM_16")
    _resampled(f"rate8k_20190522_{low_hour:02d}0000.wav", 8000)(d)
    r, db = run_replay(tmp_path, prefilled, tiny_model_dir, d)
    lost = missing_prefilled(prefilled, db)
    stored = new_windows(prefilled, db)
    record_case("supported_encodings", r, lost, windows_new=len(stored))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lost == 0
    by_hour: dict[int, list[float]] = {}
    for row in stored:
        by_hour.setdefault(start(row).hour, []).append(row["leq_db"])  # LZeq
    assert sorted(by_hour) == list(range(low_hour + 1)), sorted(by_hour)
    assert all(len(levels) == 5 for levels in by_hour.values()), {h: len(v) for h, v in by_hour.items()}
    ref = np.array(by_hour[0])
    assert np.all(np.isfinite(ref))
    worst = {}
    for name, (_, _, tol) in ENCODINGS.items():
        diff = float(np.max(np.abs(np.array(by_hour[names[name]]) - ref)))
        worst[name] = round(diff, 4)
        assert diff <= tol, (f"{name}: the same audio at another level (a wrong scale, or the replay delivered "
                             "other samples, e.g. a chunk twice)", diff, by_hour[names[name]], list(ref))
    assert np.max(np.abs(np.array(by_hour[stereo_hour]) - ref)) <= 0.01, "stereo: not the first channel"
    assert all(np.isfinite(by_hour[low_hour]))
    CASES[-1]["lzeq_max_diff_db"] = worst


def test_silence_and_full_scale_audio_are_processed_flagged_and_synced(tmp_path, prefilled, tiny_model_dir, fault_dsn):
    """Digital silence, clipped white noise, a full-scale square wave and a float recording
    12 dB over full scale: processed (exit 0) with the health flags a user would look for,
    their undefined values (silent indices: NaN) stored, and delivered to PostgreSQL with
    the pre-filled windows, exactly once."""
    d = tmp_path / "in"
    d.mkdir()
    x, rate = real()
    n = 6 * rate
    t = np.arange(n) / rate
    rng = np.random.default_rng(11)
    sf.write(str(d / "silence_20190522_200000.wav"), np.zeros(n, np.float32), rate, subtype="PCM_16")
    sf.write(str(d / "noise_20190522_210000.wav"), np.clip(rng.normal(0.0, 0.7, n), -1, 1), rate, subtype="PCM_16")
    sf.write(str(d / "square_20190522_220000.wav"), np.where(np.sin(2 * np.pi * 440 * t) >= 0, 1.0, -1.0), rate,
             subtype="FLOAT")
    sf.write(str(d / "over_20190522_230000.wav"), x / np.max(np.abs(x)) * 4.0, rate, subtype="FLOAT")
    r, db = run_replay(tmp_path, prefilled, tiny_model_dir, d)
    stored = new_windows(prefilled, db)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    flags: dict[int, list[set[str]]] = {}
    for row in stored:
        health = json.loads(row["indicators"])["health"]
        flags.setdefault(start(row).hour, []).append(set(health["flags"]))
    assert {h: len(v) for h, v in flags.items()} == {20: 3, 21: 3, 22: 3, 23: 5}
    assert all("silence" in f for f in flags[20]), flags[20]
    assert all("clipping" in f for h in (21, 22, 23) for f in flags[h]), flags
    assert not any("silence" in f for h in (21, 22, 23) for f in flags[h])
    silent = [json.loads(row["indicators"])["indices"] for row in stored if start(row).hour == 20]
    assert any(v is None or (isinstance(v, float) and math.isnan(v)) for ix in silent for v in ix.values())
    # ... and the sync takes them all, the pre-filled windows too.
    cfg = tmp_path / "agent.toml"
    s = agent("sync", "--once", "--config", str(cfg), "--dsn", fault_dsn, timeout=RUN_TIMEOUT)
    assert s.returncode == 0 and "Traceback" not in s.stderr, s.stderr[-3000:]
    delivery = check_delivery(db, fault_dsn)
    lost = missing_prefilled(prefilled, db, synced=True)
    record_case("silence_and_full_scale", r, lost, windows_new=len(stored), delivered=len(delivery.remote),
                duplicated=delivery.duplicated)
    assert lost == 0 and len(delivery.remote) == len(stored) + len(prefilled[1])
    with psycopg.connect(fault_dsn) as con:
        server_flags = [f for (f,) in con.execute("SELECT health_flags FROM windows ORDER BY start_time")]
    assert sum("silence" in f for f in server_flags) == 3 and sum("clipping" in f for f in server_flags) == 11


# ---------------------------------------------------------------------------------------------
# 3. and 4. the server: a schema of another version, wrong credentials


def _schema_up_to(dsn: str, version: int) -> None:
    """Apply agent/sql migrations 1..version by hand, as an older agent's ``db init`` left them."""
    files = sorted((ROOT / "agent" / "sql").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("CREATE TABLE schema_migrations"
                    " (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        con.execute("GRANT SELECT ON schema_migrations TO PUBLIC")
        for f in files[:version]:
            with con.transaction():
                con.execute(f.read_text())
                con.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (int(f.name[:4]),))


def _server_config(tmp_path: Path, prefilled, model: Path, dsn: str) -> tuple[Path, Path]:
    """Real-time replay of three real recordings (30 s) in 1 s windows, syncing every second.

    The recordings of 06:00, 09:00 and 12:00, not the pre-filled queue's (00:00 and 03:00):
    replayed again, their first window would start where a pre-filled one does, the same
    device and start time under a second key, a duplicate to :func:`check_delivery`."""
    db = queue_copy(prefilled, tmp_path / "state")
    cfg = write_config(
        tmp_path / "agent.toml",
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_[01][269]0000.wav"), "realtime": True},
        windows={"length_s": 1.0},
        classifier={"type": "onnx", "model": str(model)},
        store={"path": str(db)},
        sync={"dsn": dsn, "interval_s": 1.0, "backoff_initial_s": 0.5, "backoff_max_s": 1.0,
              "connect_timeout_s": 5.0, "final_timeout_s": 5.0},
        ops={"heartbeat_interval_s": 0},
    )
    return cfg, db


def _run_while_server_refuses(tmp_path: Path, cfg: Path, needle: str) -> tuple[AgentProcess, int]:
    """Start the agent, wait until it says why it cannot sync, then until it has stored two
    more windows (it keeps capturing); SIGTERM. Returns the process and the windows it printed."""
    proc = AgentProcess(cfg, tmp_path)
    try:
        proc.wait_for(lambda: needle in proc.stderr(), 120, f"the agent to log {needle!r}")
        seen = proc.windows_printed()
        proc.wait_for(lambda: proc.windows_printed() >= seen + 2, 120, "two more windows after the sync failed")
    finally:
        rc = proc.stop(timeout=120)
    assert rc == 0, proc.stderr()[-3000:]
    assert "Traceback" not in proc.stderr()
    return proc, proc.windows_printed()


#: case -> (prepares the database given the admin DSN, what the log and `sync --once` say, how to fix it).
def _newer(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (known_schema_version() + 1,))


def _fix_newer(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("DELETE FROM schema_migrations WHERE version > %s", (known_schema_version(),))


def _db_init(dsn: str) -> None:
    r = agent("db", "init", "--dsn", dsn, timeout=RUN_TIMEOUT)
    assert r.returncode == 0 and f"schema at version {known_schema_version()}" in r.stdout, r.stderr


SCHEMAS = {
    "newer_schema": (True, _newer, ("newer than this agent", "upgrade soundscape-agent"), _fix_newer),
    "older_schema": (False, lambda dsn: _schema_up_to(dsn, OLDEST_SERVER_SCHEMA - 1),
                     (f"this agent needs {OLDEST_SERVER_SCHEMA} or newer", "run 'soundscape-agent db init'"),
                     _db_init),
    "no_schema": (False, lambda dsn: None, ("no soundscape schema", "run 'soundscape-agent db init'"), _db_init),
}


@pytest.mark.parametrize("case", sorted(SCHEMAS))
def test_server_schema_of_another_version(tmp_path, prefilled, tiny_model_dir, fault_pg, case):
    """A server schema newer or older than the agent's, or none: the running agent keeps
    capturing and queueing and logs what is wrong and the fix; `sync --once` exits 75 with
    both; nothing leaves the queue; once fixed, everything arrives exactly once."""
    migrated, prepare, (what, fix_hint), fix = SCHEMAS[case]
    if not fault_pg.running:
        fault_pg.start()
    dsn = fault_pg.create_database()
    if migrated:
        _db_init(dsn)
    prepare(dsn)
    cfg, db = _server_config(tmp_path, prefilled, tiny_model_dir, dsn)
    proc, printed = _run_while_server_refuses(tmp_path, cfg, what)
    log = proc.stderr()
    assert fix_hint in log, f"the running agent does not say how to fix it ({fix_hint!r}):\n{log[-3000:]}"
    # Captured and queued all along: every window stored, none synced.
    stored = len(snapshot(db)) - len(prefilled[1])
    assert stored == printed >= 2 and unsynced_count(db) == stored + len(prefilled[1])
    depth = unsynced_count(db)
    r = agent("sync", "--once", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert_clean_error(r, 75, what, fix_hint)
    assert unsynced_count(db) == depth
    lost = missing_prefilled(prefilled, db)
    # The server fixed, everything queued arrives, exactly once.
    fix(dsn)
    s = agent("sync", "--once", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert s.returncode == 0 and f"synced {depth} windows; 0 left" in s.stdout, s.stdout + s.stderr
    delivery = check_delivery(db, dsn)
    record_case(case, r, lost, windows_new=stored, delivered=len(delivery.remote), duplicated=delivery.duplicated,
                running_log=next(ln for ln in log.splitlines() if what in ln)[:300])
    assert lost == 0 and len(delivery.remote) == depth


def _migrate_ahead(dsn: str, floor: int | None) -> int:
    """What a newer agent's ``db init`` does to the server: one more migration (an added
    column), with the compatibility floor it declares (None: none declared). Returns its version."""
    ahead = known_schema_version() + 1
    with psycopg.connect(dsn, autocommit=True) as con, con.transaction():
        con.execute("ALTER TABLE windows ADD COLUMN IF NOT EXISTS reviewer_note text")
        con.execute("ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS compatible_from int")  # as db init does
        con.execute("INSERT INTO schema_migrations (version, compatible_from) VALUES (%s, %s)", (ahead, floor))
    return ahead


def test_server_migrated_ahead_of_the_agent(tmp_path, prefilled, tiny_model_dir, fault_pg):
    """db.yml runs before the fleet is upgraded: a running agent of schema N keeps syncing to a
    server migrated to N+1 by an additive migration that declares it compatible from N (no stop,
    nothing lost or duplicated, one warning saying so); the same server declaring N+1
    incompatible is refused, the message naming both versions and the hint the release to install."""
    if not fault_pg.running:
        fault_pg.start()
    dsn = fault_pg.create_database()
    _db_init(dsn)
    known = known_schema_version()
    cfg, db = _server_config(tmp_path, prefilled, tiny_model_dir, dsn)
    proc = AgentProcess(cfg, tmp_path)
    try:
        proc.wait_for(lambda: unsynced_count(db) == 0 and proc.windows_printed() >= 2, 120, "the first windows synced")
        ahead = _migrate_ahead(dsn, known)
        with psycopg.connect(dsn, autocommit=True) as con:  # the agent reconnects and checks the schema again
            con.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()")
        seen = proc.windows_printed()
        proc.wait_for(lambda: proc.windows_printed() >= seen + 3 and unsynced_count(db) == 0, 120,
                      "three more windows synced to the migrated server")
    finally:
        rc = proc.stop(timeout=120)
    log = proc.stderr()
    assert rc == 0 and "Traceback" not in log, log[-3000:]
    assert f"schema version {ahead}, newer than this agent's {known} but compatible" in log, log[-3000:]
    assert "newer than this agent knows" not in log
    delivery = check_delivery(db, dsn)
    assert delivery.duplicated == 0 and len(delivery.remote) == len(snapshot(db)), delivery
    # The same migration declared incompatible: refused, both versions named, nothing sent.
    with psycopg.connect(dsn, autocommit=True) as con:
        con.execute("UPDATE schema_migrations SET compatible_from = %s WHERE version = %s", (ahead, ahead))
    r = agent("sync", "--once", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert_clean_error(r, 75, f"schema version {ahead}, newer than this agent knows ({known}) and incompatible",
                       f"release with schema {ahead} or newer")


def test_wrong_password(tmp_path, prefilled, tiny_model_dir, fault_dsn):
    """A wrong password: the running agent keeps queueing and says authentication failed;
    `sync --once` exits 75; the wrong password is printed nowhere; with the right one
    everything arrives."""
    wrong = f"Wr0ng-{uuid.uuid4().hex[:12]}"
    params = conninfo_to_dict(fault_dsn)
    bad_dsn = make_conninfo(**{**params, "password": wrong})
    cfg, db = _server_config(tmp_path, prefilled, tiny_model_dir, bad_dsn)
    proc, printed = _run_while_server_refuses(tmp_path, cfg, "password authentication failed")
    log = proc.stdout() + proc.stderr()
    assert "check the user" in log and "password" in log
    stored = len(snapshot(db)) - len(prefilled[1])
    assert stored == printed >= 2 and unsynced_count(db) == stored + len(prefilled[1])
    depth = unsynced_count(db)
    r = agent("sync", "--once", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert_clean_error(r, 75, "password authentication failed", "check the user")
    d = agent("diagnose", "--check", "postgres", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert d.returncode == 2 and "password authentication failed" in d.stdout, d.stdout + d.stderr
    for out in (log, r.stdout + r.stderr, d.stdout + d.stderr):
        assert wrong not in out, "the wrong password was echoed"
    assert unsynced_count(db) == depth
    lost = missing_prefilled(prefilled, db)
    s = agent("sync", "--once", "--config", str(cfg), "--dsn", fault_dsn, timeout=RUN_TIMEOUT)
    assert s.returncode == 0 and f"synced {depth} windows; 0 left" in s.stdout, s.stdout + s.stderr
    delivery = check_delivery(db, fault_dsn)
    record_case("wrong_password", r, lost, windows_new=stored, delivered=len(delivery.remote),
                duplicated=delivery.duplicated)
    assert lost == 0 and len(delivery.remote) == depth


# ---------------------------------------------------------------------------------------------
# 5. a read-only state directory


def _mount_read_only_tmpfs(where: Path, fill) -> None:
    """Mount an 8 MB tmpfs at ``where``, call ``fill(where)``, remount it read-only."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True, timeout=30)
    fill(where)
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, timeout=30)


def _unmount(where: Path) -> None:
    if subprocess.run(["mountpoint", "-q", str(where)], timeout=30).returncode == 0:
        if subprocess.run(["umount", str(where)], timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], timeout=30)


def test_read_only_state_directory(tmp_path, prefilled, tiny_model_dir, request):
    """The queue's filesystem is read-only (a tmpfs remounted ro: root ignores file modes).
    `run` and `sync --once` exit 74 naming the path; `diagnose` does not call the queue
    damaged; once writable again the queue is intact and the agent carries on with it."""
    state = tmp_path / "state"
    request.addfinalizer(lambda: _unmount(state))
    _mount_read_only_tmpfs(state, lambda d: shutil.copyfile(prefilled[0], d / "queue.db"))
    db = state / "queue.db"
    assert subprocess.run(["touch", str(state / "probe")], capture_output=True).returncode != 0, "not read-only"
    cfg = write_config(
        tmp_path / "agent.toml",
        capture={"type": "file", "path": str(REC)},
        windows={"length_s": WINDOW_S},
        classifier={"type": "onnx", "model": str(tiny_model_dir)},
        store={"path": str(db)},
    )
    r = agent("run", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert_clean_error(r, 74, str(db), "Read-only file system", "writable")
    s = agent("sync", "--once", "--config", str(cfg), "--dsn", "host=127.0.0.1 port=9 dbname=x", timeout=RUN_TIMEOUT)
    assert_clean_error(s, 74, str(db), "Read-only file system")
    # a fresh device: the queue's directory would have to be created on the read-only filesystem
    fresh = write_config(tmp_path / "fresh.toml", capture={"type": "file", "path": str(REC)},
                         classifier={"type": "onnx", "model": str(tiny_model_dir)},
                         store={"path": str(state / "sub" / "queue.db")})
    f = agent("run", "--config", str(fresh), timeout=RUN_TIMEOUT)
    assert_clean_error(f, 74, str(state / "sub"), "Read-only file system")
    # diagnose reads the queue without writing it; it must not call an intact queue damaged
    # (its advice would be to move the queue aside, losing every unsynced window)
    g = agent("diagnose", "--check", "sqlite", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert "Traceback" not in g.stdout + g.stderr and g.returncode in (0, 1, 2)
    assert "aside" not in g.stdout and "are lost" not in g.stdout, g.stdout
    assert "read-only" in g.stdout.lower() or g.returncode == 0, g.stdout
    # Writable again: the queue is intact, and the agent carries on with it.
    subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True, timeout=30)
    lost = missing_prefilled(prefilled, db)
    record_case("read_only_state_directory", r, lost, diagnose_exit=g.returncode)
    assert lost == 0
    ok = agent("run", "--config", str(cfg), timeout=RUN_TIMEOUT)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert missing_prefilled(prefilled, db) == 0 and len(snapshot(db)) == len(prefilled[1]) + 5
