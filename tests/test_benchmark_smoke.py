"""Smoke tests of the benchmark's own machinery (benchmarks/): cheap, no model, no timing asserts.

The benchmark itself (``benchmarks/run.py``) is not a test; these only check that its live
audio source behaves like a microphone and that its compute count is right.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import estimate  # noqa: E402
from harness import RealtimeAlsaFifo, prepare_audio  # noqa: E402


def test_ast_macs_formula_on_the_packaged_real_config():
    config = json.loads((ROOT / "agent" / "data" / "ast-audioset" / "config.json").read_text())
    macs = estimate.ast_macs(config)
    assert macs["patch_grid"] == [12, 101] and macs["tokens"] == 1214
    n, d, ff, layers = 1214, 768, 3072, 12
    expected = layers * (4 * n * d * d + 2 * n * d * ff + 2 * n * n * d) + 1212 * 256 * d + d * 527
    assert macs["total"] == expected == 130_514_373_888


def test_pi4_estimate_is_marked_and_consistent():
    est = estimate.pi4_estimate(130.5e9)
    assert "ESTIMATE" in est["label"]
    for row in est["rows"]:
        fast, slow = row["seconds_per_window_range"]
        assert 0 < fast <= slow
    by = {(r["precision"], r["threads"]): r for r in est["rows"]}
    assert by[("int8", 4)]["seconds_per_window_range"][0] < by[("fp32", 1)]["seconds_per_window_range"][0]


@pytest.mark.skipif(shutil.which("arecord") is None, reason="needs arecord (alsa-utils)")
def test_realtime_fifo_source_delivers_the_stream_and_drops_what_nobody_records(tmp_path):
    audio = prepare_audio(tmp_path, 3.0)
    fifo = RealtimeAlsaFifo(tmp_path / "live", audio.samples, audio.rate)
    env = fifo.setup()
    out = tmp_path / "rec.wav"
    # arecord opens the PCM first and waits for the stream, as the prototype's first window does
    rec = subprocess.Popen(["arecord", "-q", "-D", fifo.pcm_name, "-d", "1", "-f", "S16_LE", "-r", str(audio.rate),
                            "-c", "1", "-t", "wav", "--period-size=1024", "--buffer-size=4096", str(out)],
                           env={**os.environ, **env})
    fifo.start()
    assert rec.wait(timeout=30) == 0
    assert fifo.wait(timeout=30)
    fifo.close()
    got = sf.read(str(out), dtype="int16")[0]
    assert len(got) == audio.rate
    # the recording is the stream's first second, sample for sample
    assert np.array_equal(got, audio.samples[: audio.rate])
    # what was not recorded was lost (at most the FIFO's 2 units waited), as with a microphone
    recorded_units = -(-audio.rate // RealtimeAlsaFifo.UNIT_FRAMES)
    assert fifo.stats.units_accepted <= recorded_units + 2
    assert fifo.stats.units_accepted + fifo.stats.units_dropped == fifo.stats.units_total


def test_readme_model_table_is_rendered_from_the_committed_results():
    """The README's "which model on which device" table is exactly what report.py renders from
    the committed results.json, whose figures name the commit they were measured at; the
    recommended Pi 4 configuration's ESTIMATE meets its target."""
    import re

    import report

    results = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- model-table: [^>]*-->\n(.*?)<!-- /model-table -->", readme, re.S)
    assert m, "the README's model-table markers are missing"
    assert m.group(1) == report.render_model_table(results)
    assert re.fullmatch(r"[0-9a-f]{40}", results["commit"])
    rec = results["pi4_by_variant"]["pi4-recommended"]
    assert rec["rtf_3_threads_range"][1] <= 0.5 and rec["meets_target"]
    for variant in ("ast-10-10-int8", "ast-16-16-int8", "birdnet", "pi4-recommended"):
        lo, hi = results["pi4_by_variant"][variant]["rtf_3_threads_range"]
        assert 0 < lo <= hi
    by_graph = results["macs_per_window_by_variant"]
    for variant in ("10-10", "16-16"):  # the three counts agree exactly
        m = by_graph[variant]
        assert m["graph"]["model.onnx"]["total"] == m["measured"]["total"] == m["analytic"]["total"]


def test_graph_mac_count_equals_torch_flop_counter_on_a_tiny_export(tmp_path):
    """benchmarks/macs.py counts an exported graph as torch's FlopCounterMode counts the model:
    fp32 and int8 (MatMulInteger, ConvInteger) graphs of a tiny 16-16 scaffold."""
    import macs

    from agent.analysis.export import export_model
    from agent.analysis.models import scaffold

    src = scaffold(tmp_path / "s", tiny=True, variant="16-16").model_dir
    export_model(str(src), tmp_path / "x", quantize="avx2")
    torch_count = estimate.measured_macs(src)["total"]
    assert torch_count == estimate.ast_macs(json.loads((src / "config.json").read_text()))["total"]
    for name in ("model.onnx", "model_quantized.onnx"):
        assert macs.onnx_macs(tmp_path / "x" / name)["total"] == torch_count, name
