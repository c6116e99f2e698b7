"""``soundscape-agent diagnose``: against a healthy set-up (ALSA file-plugin device, real
PostgreSQL, the scaffold model, a queue the agent made) every check passes; a missing device, a
stopped PostgreSQL, a corrupt queue file and a full disk each give the matching failure with a
hint and exit 2; a busy device falls back to the service's own latest window.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from agent.ops import ntp_synchronised
from tests.audio import PCM_NAME, real_audio_s16, write_alsa_file_pcm
from tests.pg import free_port
from tests.test_run import agent, write_config

RATE = 16000


def _setup(tmp_path: Path, dsn: str, model_dir: Path, **overrides: dict) -> tuple[Path, dict]:
    env = write_alsa_file_pcm(tmp_path, real_audio_s16(RATE, 60))
    sections = dict(
        agent={"device_id": "moth-diag"},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE},
        windows={"length_s": 2.0},
        classifier={"type": "onnx", "model": str(model_dir)},
        store={"path": str(tmp_path / "state" / "queue.db")},
        sync={"dsn": dsn},
        ops={"test_capture_s": 2.0},
    )
    for name, values in overrides.items():
        sections[name] = {**sections.get(name, {}), **values}
    return write_config(tmp_path / "agent.toml", **sections), env


def _diagnose(cfg: Path, env: dict, *extra: str) -> tuple[int, dict, str]:
    r = agent("diagnose", "--json", "--config", str(cfg), *extra, env=env, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


def _by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["checks"]}


def test_healthy_setup_passes_every_check(tmp_path, tiny_model_dir, migrated_dsn):
    cfg, env = _setup(tmp_path, migrated_dsn, tiny_model_dir)
    r = agent("run", "--config", str(cfg), "--max-windows", "2", "--quiet", env=env)  # the queue exists, synced
    assert r.returncode == 0, r.stderr
    code, doc, _ = _diagnose(cfg, env)
    checks = _by_name(doc)
    assert list(checks) == ["config", "capture", "model", "sqlite", "postgres", "clock", "disk", "cpu"]
    for name, c in checks.items():
        assert set(c) >= {"name", "status", "value", "threshold", "hint"}, c
        if name != "clock":
            assert c["status"] == "ok", c
    # this machine's kernel clock decides the clock check (read independently here)
    synced = ntp_synchronised()
    assert checks["clock"]["status"] == ("ok" if synced else "warn")
    assert code == (0 if synced else 1) and doc["status"] == ("ok" if synced else "warn")
    cap = checks["capture"]["value"]
    assert cap["sample_rate"] == RATE and cap["seconds"] == 2.0 and -60 < cap["rms_dbfs"] < -10 and cap["flags"] == []
    assert isinstance(cap["devices"], list)  # what `arecord -l` enumerates (no sound card on this machine)
    model = checks["model"]["value"]
    assert model["backend"] == "onnx" and model["is_scaffold"] and 0 < model["real_time_factor"] < 0.8
    assert checks["sqlite"]["value"]["quick_check"] == "ok" and checks["sqlite"]["value"]["unsynced"] == 0
    assert checks["postgres"]["value"]["insert"] is True and checks["postgres"]["value"]["schema_version"] >= 3
    assert doc["device_id"] == "moth-diag"
    # the INSERT probe was rolled back
    import psycopg
    with psycopg.connect(migrated_dsn) as con:
        assert con.execute("SELECT count(*) FROM heartbeats WHERE agent_version = 'diagnose-probe'").fetchone()[0] == 0
    # the table form, and --check selecting checks
    r = agent("diagnose", "--config", str(cfg), "--check", "disk", env=env)
    assert r.returncode == 0 and "disk" in r.stdout and "overall: OK" in r.stdout and "capture" not in r.stdout
    # the optional spectrogram of the test capture (2 s at 16 kHz, 512-point frames): a colour PNG
    # drawn like the report's figures (axes, dB colour bar: tests/test_report.py looks closer),
    # larger than the bare one-pixel-per-cell image it was before, which it still is without matplotlib
    png = tmp_path / "capture.png"
    r = agent("diagnose", "--config", str(cfg), "--check", "capture", "--spectrogram", str(png), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert data[25] in (2, 6)  # IHDR colour type: RGB or RGBA (the bare image was 0, grayscale)
    assert width > (2 * RATE - 512) // 256 + 1 and height > 257


def test_missing_device_fails_with_hint(tmp_path, tiny_model_dir, migrated_dsn):
    cfg, env = _setup(tmp_path, migrated_dsn, tiny_model_dir, capture={"pcm": "no_such_capture_pcm"})
    code, doc, _ = _diagnose(cfg, env, "--check", "capture")
    c = _by_name(doc)["capture"]
    assert code == 2 and c["status"] == "fail" and "no_such_capture_pcm" in c["detail"]
    assert "arecord -l" in c["hint"]


def test_stopped_postgres_fails_with_hint(tmp_path, tiny_model_dir):
    dsn = f"host=127.0.0.1 port={free_port()} dbname=soundscape user=device connect_timeout=2"  # nothing listens
    cfg, env = _setup(tmp_path, dsn, tiny_model_dir)
    code, doc, _ = _diagnose(cfg, env, "--check", "postgres")
    c = _by_name(doc)["postgres"]
    assert code == 2 and c["status"] == "fail" and "127.0.0.1" in c["detail"]
    assert c["hint"] and "server" in c["hint"].lower()


def test_corrupt_queue_fails_with_hint(tmp_path, tiny_model_dir, migrated_dsn):
    cfg, env = _setup(tmp_path, migrated_dsn, tiny_model_dir)
    queue = tmp_path / "state" / "queue.db"
    queue.parent.mkdir()
    queue.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))  # a damaged header and pages
    code, doc, _ = _diagnose(cfg, env, "--check", "sqlite")
    c = _by_name(doc)["sqlite"]
    assert code == 2 and c["status"] == "fail" and "move" in c["hint"] and str(queue) in c["hint"]
    assert queue.read_bytes().startswith(b"SQLite format 3\x00")  # diagnose changed nothing


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 2 MB tmpfs mounted for the test (needs root, as the test machine's CI has)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_with_hint(tmp_path, tiny_model_dir, migrated_dsn, tiny_filesystem):
    cfg, env = _setup(tmp_path, migrated_dsn, tiny_model_dir, store={"path": str(tiny_filesystem / "queue.db")},
                      ops={"disk_fail_free_mb": 1.0, "disk_warn_free_mb": 1.5})
    code, doc, _ = _diagnose(cfg, env, "--check", "disk")
    assert code == 0 and _by_name(doc)["disk"]["status"] == "ok"  # 2 MB free: above both limits
    with open(tiny_filesystem / "filler", "wb") as fh:  # fill it up
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    code, doc, _ = _diagnose(cfg, env, "--check", "disk")
    c = _by_name(doc)["disk"]
    assert code == 2 and c["status"] == "fail" and c["value"]["free_mb"] < 1.0
    assert c["threshold"] == {"warn_below_mb": 1.5, "fail_below_mb": 1.0} and "free space" in c["hint"]


def test_invalid_config_is_a_failed_check_not_a_traceback(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[capture]\nsample_rate = 12\nbogus = 1\n")
    r = agent("diagnose", "--json", "--config", str(cfg))
    doc = json.loads(r.stdout)
    checks = _by_name(doc)
    assert r.returncode == 2 and checks["config"]["status"] == "fail" and "bogus" in checks["config"]["detail"]
    assert checks["capture"]["status"] == "fail" and "configuration" in checks["capture"]["hint"]
    assert "Traceback" not in r.stderr
    r = agent("diagnose", "--check", "nonsense", "--config", str(cfg))
    assert r.returncode != 0 and "--check takes one of" in r.stderr and "Traceback" not in r.stderr


def test_model_check_says_whether_the_configured_classifiers_keep_up_together(tmp_path, tiny_model_dir,
                                                                             full_model_dir, migrated_dsn):
    """AST (tiny scaffold) beside BirdNET (real weights) on 3 s windows keeps up here; the
    full-size AST on PyTorch with 1 s windows does not (each window is padded to AST's 10.24 s
    of frames: ~2 s of compute per 1 s hop), and the check says so with what to change."""
    cfg, env = _setup(tmp_path, migrated_dsn, tiny_model_dir, windows={"length_s": 3.0},
                      birdnet={"enabled": True})
    code, doc, _ = _diagnose(cfg, env, "--check", "model")
    c = _by_name(doc)["model"]
    assert code == 0 and c["status"] == "ok", c
    assert [t["taxonomy"] for t in c["value"]["classifiers"]] == ["audioset", "birdnet"]
    assert c["value"]["keeps_up"] is True
    rtf = c["value"]["real_time_factor"]
    assert rtf == pytest.approx(sum(t["inference_s"] for t in c["value"]["classifiers"]) / 3.0, abs=2e-3)
    assert "CC BY-NC-SA 4.0" in c["detail"] and "keeps up" in c["detail"]

    cfg, env = _setup(tmp_path, migrated_dsn, full_model_dir, windows={"length_s": 1.0},
                      classifier={"type": "torch", "threads": 1})
    code, doc, _ = _diagnose(cfg, env, "--check", "model")
    c = _by_name(doc)["model"]
    assert code == 1 and c["status"] == "warn" and c["value"]["keeps_up"] is False, c
    assert c["value"]["real_time_factor"] > 0.8 and "does NOT keep up" in c["detail"]
    assert "every_n_windows" in c["hint"] and "16-16" in c["hint"]
