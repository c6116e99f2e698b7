"""Config: defaults, the documented example, and errors that name key, value and rule."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.config import Config, load_config, parse_config
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
    for name, field in Config.model_fields.items():
        default = getattr(Config(), name)
        keys |= {f"{name}.{k}" for k in type(default).model_fields}
    keys |= {f"capture.{k}" for k in FileCaptureConfig.model_fields}
    keys |= {f"classifier.{k}" for k in OnnxClassifierConfig.model_fields}
    return keys


def test_example_documents_every_key_and_equals_defaults():
    text = EXAMPLE.read_text()
    assert _documented_keys(text) == _model_keys()
    assert load_config(EXAMPLE) == Config()


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
