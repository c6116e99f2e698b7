"""Config: defaults, the documented example, and errors that name key, value and rule."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import Config, example_toml, load_config, parse_config
from agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def _documented_keys(text: str) -> set[str]:
    """Keys in the example, whether set or shown commented out (`# key = value`)."""
    keys, section = set(), ""
    for line in text.splitlines():
        if m := re.match(r"^\[(\w+)\]", line):
            section = m[1]
        elif m := re.match(r"^#?\s?(\w+) = ", line):
            keys.add(f"{section}.{m[1]}")
    return keys


def _model_keys() -> set[str]:
    from agent.config import FileCaptureConfig, OnnxClassifierConfig

    keys = set()
    for name, _field in Config.model_fields.items():
        default = getattr(Config(), name)
        keys |= {f"{name}.{k}" for k in type(default).model_fields}
    keys |= {f"capture.{k}" for k in FileCaptureConfig.model_fields}
    keys |= {f"classifier.{k}" for k in OnnxClassifierConfig.model_fields}
    return keys


def _first_difference(committed: str, generated: str) -> str:
    for n, (old, new) in enumerate(zip(committed.splitlines(), generated.splitlines(), strict=False), 1):
        if old != new:
            return f"line {n}:\n  committed: {old!r}\n  generated: {new!r}"
    return f"lengths differ: {len(committed.splitlines())} vs {len(generated.splitlines())} lines"


def test_example_documents_every_key_and_equals_defaults():
    text = EXAMPLE.read_text()
    assert _documented_keys(text) == _model_keys()
    assert load_config(EXAMPLE) == Config()
    # The committed file is exactly what `soundscape-agent config example` generates from the models.
    generated = example_toml()
    assert EXAMPLE.read_bytes() == generated.encode("utf-8"), (
        "config.example.toml is not what agent/config.py generates ("
        + _first_difference(EXAMPLE.read_text(encoding="utf-8"), generated)
        + "); regenerate it: soundscape-agent config example > config.example.toml")


def test_defaults_suit_an_audiomoth_on_a_pi():
    c = Config()
    assert c.capture.type == "alsa" and c.capture.device == "AudioMoth" and c.capture.sample_rate == 48000
    assert c.windows.length_s == 10 and c.windows.effective_hop_s == 10
    assert c.classifier.top_k == 5 and c.classifier.model == "MIT/ast-finetuned-audioset-10-10-0.4593"
    assert str(c.store.path) == "/var/lib/soundscape-agent/queue.db"
    assert (c.sync.interval_s, c.sync.batch_size) == (30.0, 500)
    gsm = parse_config({"sync": {"link": "gsm"}}).sync
    assert gsm.interval_s == 3600 and gsm.batch_size < 500 and gsm.connect_timeout_s > 10


def test_all_errors_reported_at_once_with_key_value_and_rule(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('[windows]\nlength_s = 120\n[capture]\nsample_rate = "fast"\ncolour = 3\n[sync]\nlink = "lte"\n')
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "4 invalid setting(s)" in msg
    assert "windows.length_s" in msg and "less than or equal to 60" in msg and "120" in msg
    assert "capture.sample_rate" in msg and "'fast'" in msg
    assert "capture.colour: unknown key" in msg
    assert "sync.link" in msg and "'ethernet' or 'gsm'" in msg
    assert e.value.exit_code == 78


def test_unparsable_and_missing_files(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_source_and_backend_chosen_by_type_key():
    c = parse_config({"capture": {"type": "file", "path": "x.wav"}, "classifier": {"type": "onnx"}})
    assert c.capture.type == "file" and c.classifier.file_name == "model.onnx"
    with pytest.raises(ConfigError, match="capture.device: unknown key"):
        parse_config({"capture": {"type": "file", "path": "x.wav", "device": "AudioMoth"}})
    assert tomllib.loads(EXAMPLE.read_text())["capture"]["type"] == "alsa"


# ------------------------------------------------------------------ the generated example


def _section_models() -> dict[str, list[type]]:
    """Every section's models, by top-level key (both variants of a ``type``-chosen section)."""
    from agent.config import _variants

    return {name: _variants(field) for name, field in Config.model_fields.items()}


def test_every_key_of_every_section_has_a_description():
    missing = [f"{name}.{key} ({model.__name__})"
               for name, models in _section_models().items() for model in models
               for key, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, missing
    assert all((f.description or "").strip() for f in Config.model_fields.values())


def test_config_example_command_prints_the_committed_file():
    r = subprocess.run([sys.executable, "-m", "agent.cli", "config", "example"], capture_output=True, check=False,
                       cwd=EXAMPLE.parent, env={**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "latin-1"},
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == EXAMPLE.read_bytes()


def test_example_renders_deterministically(monkeypatch):
    """Field defaults only: nothing computed from the machine, the environment or the link
    profile's validator reaches the text."""
    first = example_toml()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/x")
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert example_toml() == first
    assert "\n# threads = 1  # default depends on type: 1 (\"torch\"), 0 (\"onnx\")\n" in first
    for key in ("interval_s", "batch_size", "connect_timeout_s", "statement_timeout_s"):
        assert re.search(rf"^# {key} = \S+  # example; unset by default$", first, re.MULTILINE), key


def test_secrets_and_unset_keys_are_commented_out_with_an_example():
    text = example_toml()
    data = tomllib.loads(text)
    assert "dsn" not in data["sync"] and "password_file" not in data["sync"]
    assert re.search(r"^# dsn = .*  # example; secret", text, re.MULTILINE)
    assert "password" not in re.search(r"^# dsn = (.*)  #", text, re.MULTILINE)[1]
    for section, key in [("capture", "pcm"), ("windows", "hop_s"), ("levels", "calibration_offset_db"),
                         ("birdnet", "latitude"), ("ops", "textfile_path"), ("capture", "path")]:
        assert key not in data[section]
        assert re.search(rf"^# {key} = .*  # example", text, re.MULTILINE), key


def test_uncommented_examples_are_valid_settings():
    """Every example value shown for a commented-out key is accepted by its section."""
    for name, models in _section_models().items():
        for model in models:
            doc = {k: f.examples[0] for k, f in model.model_fields.items() if f.examples}
            if "type" in model.model_fields:
                doc["type"] = model.model_fields["type"].default
            parsed = getattr(parse_config({name: doc}), name)
            assert type(parsed) is model
            for key, value in doc.items():
                assert getattr(parsed, key) == (tuple(value) if isinstance(value, list) else value), (name, key)


def test_toml_values_round_trip():
    from agent.config import _toml_value

    for value in ['a "quoted" \\ path\twith\x00\x1f\x7f and é°', "", 0.001, 1e-05, 1e16, -38.0, 3, True,
                  (2000.0, 15000.0), float("inf"), float("-inf")]:
        got = tomllib.loads(f"x = {_toml_value(value)}")["x"]
        assert got == (list(value) if isinstance(value, tuple) else value), value
    assert math.isnan(tomllib.loads(f"x = {_toml_value(float('nan'))}")["x"])


def test_comment_lines_never_read_as_keys():
    from agent.config import _comment

    text = "word " * 18 + "zero 0 = off, and then " + "more " * 30
    for width_pad in range(40):
        lines = _comment("x" * width_pad + " " + text)
        assert all(not re.match(r"^#?\s?\w+ = ", line) for line in lines[1:]), lines
        assert " ".join(line[2:] for line in lines).split() == ("x" * width_pad + " " + text).split()


def test_read_password_lives_with_the_config(tmp_path):
    """[sync] password_file is read by agent.config.read_password (moved from agent.sync)."""
    from agent.config import read_password

    cred = tmp_path / "pg-password"
    cred.write_text("s3cret pass\nignored\n")
    cred.chmod(0o600)
    assert read_password("${CREDENTIALS_DIRECTORY}/pg-password",
                         {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret pass"
    cred.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible to group or others"):
        read_password(str(cred), {})
