"""The onnx backend in a REAL torch-free environment.

A session fixture builds a fresh virtualenv with ``scripts/make-onnx-venv.sh`` (the core
install only, as on a Raspberry Pi: no torch, transformers or optimum). In it, the agent runs
the main job on the bundled real recordings with the tiny scaffold's ``model.onnx``, and its
scores are compared with the torch backend's in the main environment. The processes run from
a temporary directory, so ``agent`` is imported from the venv's installed copy, not from this
checkout.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agent.analysis.classifier import load_classifier
from agent.config import TorchClassifierConfig
from tests.model_fixtures import AUDIO, RECORDING, read_recording

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "optimum")


@pytest.fixture(scope="session")
def onnx_venv(tmp_path_factory) -> Path:
    """A venv holding only ``pip install <this repo>`` (core dependencies), built once a session."""
    venv = tmp_path_factory.mktemp("onnx-venv") / "venv"
    started = time.monotonic()
    proc = subprocess.run([str(ROOT / "scripts" / "make-onnx-venv.sh"), str(venv)], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"scripts/make-onnx-venv.sh: {time.monotonic() - started:.1f} s")
    if proc.returncode != 0:
        pytest.fail(f"make-onnx-venv.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}",
                    pytrace=False)
    return venv


def venv_python(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the venv's python in ``cwd`` (outside the checkout), offline from the HF hub."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(venv / "bin" / "python"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


def test_venv_has_no_torch(onnx_venv, tmp_path):
    for module in HEAVY:
        proc = venv_python(onnx_venv, "-c", f"import {module}", cwd=tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (module, proc.stderr)
    proc = venv_python(onnx_venv, "-c", "import agent, onnxruntime; print(agent.__file__)", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    installed = Path(proc.stdout.strip()).resolve()
    assert installed.is_relative_to(onnx_venv.resolve()), installed  # the installed copy, not the checkout


def _config(tmp_path: Path, model_dir: Path, db: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        "[capture]\n"
        f'type = "file"\npath = "{AUDIO}/S4A03895_20190522_*.wav"\n'
        "[classifier]\n"
        f'type = "onnx"\nmodel = "{model_dir}"\nfile_name = "model.onnx"\ntop_k = 5\n'
        "[store]\n"
        f'path = "{db}"\n'
    )
    return cfg


DRIVER = """
import json, sys
from agent.cli import main
rc = main(["run", "--config", sys.argv[1], "--max-windows", "3", "--quiet"])
heavy = sorted(k for k in sys.modules if k.split(".")[0] in {"torch", "transformers", "optimum"})
print(json.dumps({"rc": rc, "heavy": heavy, "onnxruntime": "onnxruntime" in sys.modules}))
"""


def _stored(db: Path) -> tuple[list[tuple], int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        windows = con.execute("SELECT window_index, status, model_backend, model_is_scaffold FROM windows "
                              "ORDER BY window_index").fetchall()
        detections = con.execute("SELECT count(*) FROM detections").fetchone()[0]
    finally:
        con.close()
    return windows, detections


def test_cli_run_with_onnx_backend(onnx_venv, tiny_model_dir, tmp_path):
    db = tmp_path / "queue.db"
    cfg = _config(tmp_path, tiny_model_dir, db)
    started = time.monotonic()
    proc = venv_python(onnx_venv, "-m", "agent.cli", "run", "--config", str(cfg), "--max-windows", "3",
                       cwd=tmp_path)
    print(f"agent run (3 windows, torch-free venv): {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend onnx" in proc.stdout and "SCAFFOLD" in proc.stdout
    windows, detections = _stored(db)
    assert windows == [(i, "classified", "onnx", 1) for i in range(3)]
    assert detections == 3 * 5


def test_run_imports_neither_torch_nor_transformers_nor_optimum(onnx_venv, tiny_model_dir, tmp_path):
    """In-process: the whole main job, then a look at sys.modules."""
    db = tmp_path / "queue.db"
    cfg = _config(tmp_path, tiny_model_dir, db)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    proc = venv_python(onnx_venv, str(driver), str(cfg), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "heavy": [], "onnxruntime": True}
    assert len(_stored(db)[0]) == 3


SCORES = """
import json, sys
import soundfile as sf
from agent.analysis.classifier import load_classifier
from agent.config import OnnxClassifierConfig
clf = load_classifier(OnnxClassifierConfig(model=sys.argv[1]))
x, rate = sf.read(sys.argv[2], dtype="float32")
print(json.dumps({"scores": clf.scores(x, rate).tolist(), "hash": clf.info.model_hash,
                  "labels": list(clf.labels)}))
"""


def test_onnx_scores_in_torch_free_venv_equal_torch_backend(onnx_venv, tiny_model_dir, tmp_path):
    script = tmp_path / "scores.py"
    script.write_text(SCORES)
    proc = venv_python(onnx_venv, str(script), str(tiny_model_dir), str(RECORDING), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    onnx = json.loads(proc.stdout.strip().splitlines()[-1])

    torch_clf = load_classifier(TorchClassifierConfig(model=str(tiny_model_dir)))
    x, rate = read_recording(RECORDING)
    expected = torch_clf.scores(x, rate)
    got = np.asarray(onnx["scores"])
    err = float(np.max(np.abs(got - expected)))
    print(f"tiny scaffold fp32, {RECORDING.name}: max |onnx (torch-free venv) - torch| = {err:.3g}")
    assert got.shape == (527,) and err <= 1e-4
    from agent.analysis.models import model_hash

    assert onnx["hash"] == model_hash(tiny_model_dir, ("model.onnx", "model.onnx_data"))
    assert onnx["labels"] == list(torch_clf.labels)
    assert "torch" in sys.modules  # the reference really ran on torch, in this process
