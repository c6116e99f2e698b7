"""The main job end to end: the real agent process, real ALSA (file plugin), real recordings,
real SQLite, a real PostgreSQL server, the real model code path (scaffold weights)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

from agent.analysis.levels import LevelMeter, nominal_calibration
from agent.config import LevelsConfig
from tests.audio import PCM_NAME, RECORDINGS, real_audio_s16, write_alsa_file_pcm

RATE = 48000
AGENT = [sys.executable, "-m", "agent.cli"]


def agent(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the soundscape-agent CLI as a user would, in a separate process."""
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).parent.parent)


def write_config(path: Path, **sections: dict) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            if isinstance(v, bool):
                lines.append(f"{k} = {'true' if v else 'false'}")
            elif isinstance(v, (int, float)):
                lines.append(f"{k} = {v}")
            else:
                lines.append(f"{k} = {str(v)!r}".replace("'", '"'))
    path.write_text("\n".join(lines) + "\n")
    return path


def queue_rows(db: Path) -> list[tuple]:
    """(window key, synced?) for every window in the SQLite outbox, opened read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT key, synced_at IS NOT NULL FROM windows ORDER BY key").fetchall()
    finally:
        con.close()


def test_run_alsa_source_to_postgres_every_window_exactly_once(tmp_path, tiny_model_dir, migrated_dsn):
    n_windows = 12
    audio = real_audio_s16(RATE, n_windows * 10 + 90)
    env = write_alsa_file_pcm(tmp_path, audio)
    cfg = write_config(
        tmp_path / "agent.toml",
        agent={"device_id": "moth-e2e"},
        capture={"type": "alsa", "pcm": PCM_NAME, "sample_rate": RATE},
        classifier={"model": str(tiny_model_dir), "queue_size": 100, "top_k": 5},
        store={"path": str(tmp_path / "queue.db")},
        sync={"dsn": migrated_dsn, "interval_s": 0.5},
    )
    r = agent("run", "--config", str(cfg), "--max-windows", str(n_windows), env=env)
    assert r.returncode == 0, r.stderr
    assert "SCAFFOLD" in r.stdout and "done: 12 windows (12 classified" in r.stdout

    with psycopg.connect(migrated_dsn) as con:
        rows = con.execute("SELECT window_key, window_index, leq_db, model_id, model_is_scaffold, device "
                           "FROM windows ORDER BY window_index").fetchall()
        dets = con.execute("SELECT window_key, array_agg(rank ORDER BY rank), count(*) FROM detections "
                           "GROUP BY window_key").fetchall()
        indicators = con.execute(
            "SELECT n.laeq_db, n.lafmax_db, n.la10_db, n.la50_db, n.la90_db, n.cal_offset_db, n.cal_gain_db,"
            " n.cal_time, i.aci, i.ndsi, h.healthy, h.flags, (SELECT count(*) FROM band_levels b"
            " WHERE b.window_key = n.window_key) FROM noise_levels n JOIN acoustic_indices i USING (window_key)"
            " JOIN mic_health h USING (window_key) ORDER BY n.start_time").fetchall()
        flat = con.execute("SELECT * FROM detections_flat LIMIT 1")
        flat_cols = [c.name for c in flat.description][:5]
    assert [r[1] for r in rows] == list(range(n_windows))
    assert len({r[0] for r in rows}) == n_windows
    assert all(r[5] == "moth-e2e" and r[4] and r[3].startswith("SCAFFOLD-random-weights") for r in rows)
    assert len(dets) == n_windows and all(d[1] == [1, 2, 3, 4, 5] for d in dets)
    assert flat_cols == ["label", "score", "device", "sync_id", "sync_time"]
    # The stored SPL is that of exactly the samples ALSA delivered for each window.
    # (a level meter fed the same windows in order: filter states carry from window to window)
    n = 10 * RATE
    meter = LevelMeter(LevelsConfig(), RATE, nominal_calibration(LevelsConfig()))
    for _key, index, leq, *_ in rows:
        x = audio[index * n:(index + 1) * n].astype(np.float32) / 32768
        # an xrun (the machine too loaded to drain ALSA's 0.8 s buffer) restarts the meter's
        # filters: say so rather than report a level mismatch
        assert abs(leq - meter.process(x, index * n).lzeq_db) < 1e-6, (index, "xruns:", r.stdout.splitlines()[-1])
    local = queue_rows(tmp_path / "queue.db")
    assert [k for k, _ in local] == sorted(r[0] for r in rows) and all(s for _, s in local)
    # Every window carries calibrated LAeq / LAFmax / Ln, bands, indices and health, with the
    # calibration it used (never calibrated here: the nominal AudioMoth chain, offset 0).
    assert len(indicators) == n_windows
    for laeq, lafmax, la10, la50, la90, offset, gain, cal_time, aci, ndsi, healthy, flags, n_bands in indicators:
        assert lafmax >= la10 >= la50 >= la90 and laeq < lafmax
        assert (offset, gain, cal_time) == (0.0, LevelsConfig().gain_db, None)
        assert np.isfinite(aci) and -1 <= ndsi <= 1
        assert healthy and flags == []  # real field recordings: no health flag
        assert n_bands == 30  # 25 Hz ... 20 kHz at 48 kHz


def test_sigterm_finishes_windows_in_flight_syncs_and_exits_0(tmp_path, tiny_model_dir, migrated_dsn):
    cfg = write_config(
        tmp_path / "agent.toml",
        capture={"type": "file", "path": str(RECORDINGS / "S4A03895_20190522_060000.wav"),
                 "realtime": True, "loop": True},
        windows={"length_s": 1.0},
        classifier={"model": str(tiny_model_dir)},
        store={"path": str(tmp_path / "queue.db")},
        sync={"dsn": migrated_dsn, "interval_s": 60},  # only the final sync can deliver
    )
    proc = subprocess.Popen([*AGENT, "run", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum("window" in ln for ln in lines) < 3:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "done:" in out
    local = queue_rows(tmp_path / "queue.db")
    assert len(local) >= 3 and all(synced for _, synced in local), "final sync must deliver every window"
    with psycopg.connect(migrated_dsn) as con:
        remote = sorted(k for (k,) in con.execute("SELECT window_key FROM windows"))
    assert remote == [k for k, _ in local]


def test_demo_runs_on_bundled_recordings_and_announces_the_scaffold(tmp_path, full_model_dir, pg_dsn):
    """The README's first command: real recordings, real pipeline, 5 s windows, the AST scaffold
    announced, BirdNET's real species (the Red-faced Spinetail on the spinetail recording), and
    with SOUNDSCAPE_DSN set the demo creates the schema and syncs every window."""
    r = agent("demo", "--state-dir", str(tmp_path), "--scaffold-dir", str(full_model_dir),
              env={"SOUNDSCAPE_DSN": pg_dsn}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "the real model could not be loaded" in r.stdout and "FALLING BACK to a SCAFFOLD" in r.stdout
    assert "model: SCAFFOLD-random-weights" in r.stdout
    window_lines = [ln for ln in r.stdout.splitlines() if ln.startswith("window")]
    n = 8 * 2 + 3  # eight 10 s recordings and one of 19.5 s, in whole 5 s windows
    assert len(window_lines) == n and all("dB SPL" in ln for ln in window_lines)
    assert "2019-05-22 06:00:00 UTC" in r.stdout
    assert sum("[SCAFFOLD model: labels meaningless]" in ln for ln in window_lines) == n
    assert "BirdNET species classification: on" in r.stdout and "CC BY-NC-SA 4.0" in r.stdout
    spinetail = [ln for ln in window_lines if "2018-09-19" in ln]
    assert len(spinetail) == 3 and any("Red-faced Spinetail (Cranioleuca erythrops)" in ln for ln in spinetail)
    local = queue_rows(tmp_path / "queue.db")
    assert len(local) == n and all(synced for _, synced in local)
    with psycopg.connect(pg_dsn) as con:
        assert con.execute("SELECT count(*) FROM windows WHERE model_is_scaffold").fetchone()[0] == n
        assert con.execute("SELECT count(*) FROM detections_flat WHERE taxonomy = 'audioset'").fetchone()[0] == n * 5
        birds = con.execute("SELECT DISTINCT model_id, model_is_scaffold FROM detections_flat"
                            " WHERE taxonomy = 'birdnet'").fetchall()
        assert len(birds) == 1 and "CC BY-NC-SA 4.0" in birds[0][0] and birds[0][1] is False
