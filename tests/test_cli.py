"""Bad input through the CLI: one clear message each, a non-zero exit, no traceback,
nothing lost from the queue. Also the scaffold command and the console script."""

from __future__ import annotations

import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from agent.sync import known_schema_version
from tests.audio import RECORDINGS
from tests.test_run import agent, write_config


@pytest.fixture
def queued(tmp_path, tiny_model_dir):
    """A config whose queue already holds 4 unsynced windows of real audio."""
    db = tmp_path / "queue.db"
    cfg = dict(
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_0[0-3]*.wav")},
        classifier={"model": str(tiny_model_dir)},
        windows={"length_s": 5.0},
        store={"path": str(db)},
    )
    r = agent("run", "--config", str(write_config(tmp_path / "ok.toml", **cfg)))
    assert r.returncode == 0, r.stderr
    return cfg, db


def _unsynced(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM windows WHERE synced_at IS NULL").fetchone()[0]
    finally:
        con.close()


def _bad(tmp_path, cfg, **changes):
    merged = {k: dict(v) for k, v in cfg.items()}
    for section, values in changes.items():
        merged[section] = values if section == "capture" else {**merged.get(section, {}), **values}
    return write_config(tmp_path / "bad.toml", **merged)


def _assert_clean_error(r, code: int, *needles: str):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    assert r.stderr.count("error:") == 1
    for n in needles:
        assert n in r.stderr, r.stderr


def test_invalid_config_value(tmp_path, queued):
    cfg, db = queued
    r = agent("run", "--config", str(_bad(tmp_path, cfg, windows={"length_s": 0.2})))
    _assert_clean_error(r, 78, "windows.length_s", "0.2", "greater than or equal to 1")
    assert _unsynced(db) == 4


def test_unknown_device_name(tmp_path, queued):
    cfg, db = queued
    r = agent("run", "--config", str(_bad(tmp_path, cfg, capture={"type": "alsa", "device": "NoSuchMoth"})))
    _assert_clean_error(r, 69, "NoSuchMoth", "capture devices found")
    assert _unsynced(db) == 4


def test_missing_model_directory(tmp_path, queued):
    cfg, db = queued
    r = agent("run", "--config", str(_bad(tmp_path, cfg, classifier={"model": str(tmp_path / "no-model")})))
    _assert_clean_error(r, 66, str(tmp_path / "no-model"), "model scaffold")
    assert _unsynced(db) == 4


def test_unreachable_dsn(tmp_path, queued):
    cfg, db = queued
    dsn = "postgresql://agent:s3cret-pw@127.0.0.1:9/soundscape"  # port 9 (discard): nothing listens
    r = agent("sync", "--once", "--config", str(_bad(tmp_path, cfg, sync={"dsn": dsn, "connect_timeout_s": 2})))
    _assert_clean_error(r, 75, "127.0.0.1")
    assert "s3cret-pw" not in r.stderr + r.stdout
    assert _unsynced(db) == 4


def test_missing_config_file(tmp_path):
    r = agent("run", "--config", str(tmp_path / "nope.toml"))
    _assert_clean_error(r, 78, "nope.toml", "does not exist")


def test_model_scaffold_command_writes_a_marked_test_model(tmp_path):
    out = tmp_path / "scaffold"
    r = agent("model", "scaffold", "--out", str(out), "--tiny")
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").exists() and (out / "SCAFFOLD.json").exists()
    assert "SCAFFOLD" in r.stdout


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "soundscape-agent"
    assert exe.exists() or shutil.which("soundscape-agent"), "pip install -e . must provide the console script"


def test_docs_exit_code_table_matches_the_code():
    """docs/operations.md's exit-code table (moved there from the README) lists exactly the codes."""
    import re

    from agent import errors

    doc = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    table = {int(m[1]) for m in re.finditer(r"^\| (\d+) \| ", doc, re.M)}
    codes = {0, errors.EX_USAGE, errors.EX_SOFTWARE} | {
        cls.exit_code for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.AgentError) and cls is not errors.AgentError}
    assert table == codes


def test_usage_error_exits_64():
    r = agent("run", "--max-windows", "many")
    assert r.returncode == 64 and "invalid int value" in r.stderr


def test_readme_setup_commands_are_the_scripts_ci_runs():
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## Set-up: two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    assert "scripts/test.sh" in (root / ".ci" / "run").read_text()
    assert all((root / c).exists() for c in commands)


def test_db_init_is_idempotent_and_sync_once_delivers_the_queue(tmp_path, queued, pg_dsn):
    import psycopg

    cfg, db = queued
    for _ in range(2):
        r = agent("db", "init", "--dsn", pg_dsn)
        assert r.returncode == 0 and f"schema at version {known_schema_version()}" in r.stdout, r.stderr
    assert "password" not in r.stdout.lower() or "***" in r.stdout
    conf = str(write_config(tmp_path / "sync.toml", **cfg))
    r = agent("sync", "--once", "--config", conf, "--dsn", pg_dsn)
    assert r.returncode == 0 and "synced 4 windows; 0 left" in r.stdout, r.stderr
    assert _unsynced(db) == 0
    r = agent("sync", "--once", "--config", conf, "--dsn", pg_dsn)
    assert r.returncode == 0 and "synced 0 windows" in r.stdout
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT count(*), count(DISTINCT window_key) FROM windows").fetchone() == (4, 4)
