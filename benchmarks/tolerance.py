"""int8 vs fp32 scores on every benchmark window, through the agent's own classifiers.

Loads ``model.onnx`` and ``model_quantized.onnx`` of an export with
:func:`agent.analysis.classifier.load_classifier` (the code path ``soundscape-agent run``
uses), cuts the benchmark WAV into the same consecutive windows the pipeline cuts, and
compares each window's 527 sigmoid scores (:meth:`scores`: resampling, features, model,
sigmoid) against the tolerance the export's ``manifest.json`` states (``tolerances.int8``:
max |Δ score| and top-k overlap, the definitions ``model export`` verifies with).

Run by ``run.py`` with the torch-free virtualenv's Python::

    python benchmarks/tolerance.py --model EXPORT_DIR --wav BENCH.wav [--window-s 10]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Compare int8 and fp32 on every window; print the JSON report. Exit 0 (1: tolerance missed)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="export directory (manifest.json, both ONNX files)")
    p.add_argument("--wav", required=True, type=Path)
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import soundfile as sf

    from agent.analysis.classifier import load_classifier
    from agent.analysis.export import topk_overlap
    from agent.config import OnnxClassifierConfig

    manifest = json.loads((args.model / "manifest.json").read_text())
    tol = manifest["tolerances"]["int8"]
    k = int(tol.get("top_k", 5))
    models = {}
    for name, file_name in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        cfg = OnnxClassifierConfig(model=str(args.model), file_name=file_name, threads=args.threads)
        models[name] = load_classifier(cfg)

    audio, rate = sf.read(str(args.wav), dtype="float32")
    n = int(round(args.window_s * rate))
    windows = []
    started = time.monotonic()
    for i in range(len(audio) // n):
        x = audio[i * n:(i + 1) * n]
        s32 = models["fp32"].scores(x, rate)
        s8 = models["int8"].scores(x, rate)
        diff = float(np.max(np.abs(s8 - s32)))
        overlap = float(topk_overlap(s32[None, :], s8[None, :], k)[0])
        windows.append({
            "index": i, "start_s": i * args.window_s, "max_abs_diff": diff,
            "mean_abs_diff": float(np.mean(np.abs(s8 - s32))), f"top{k}_overlap": overlap,
            "top1_same": int(np.argmax(s32)) == int(np.argmax(s8)),
            "passed": diff <= tol["max_abs_diff"] and overlap >= tol["min_topk_overlap"],
        })
    report = {
        "method": ("agent.analysis.classifier.load_classifier(type=onnx) for model.onnx and "
                   "model_quantized.onnx; Classifier.scores() of each consecutive "
                   f"{args.window_s:g} s window of the benchmark WAV; max |score int8 - score fp32| "
                   f"over the {len(models['fp32'].labels)} labels, "
                   f"top-{k} overlap = |top{k}(int8) & top{k}(fp32)| / {k}"),
        "tolerance": tol,
        "tolerance_source": f"{args.model / 'manifest.json'}: tolerances.int8",
        "manifest_verification_passed": manifest.get("verification", {}).get("passed"),
        "quantization": {key: manifest.get("quantization", {}).get(key) for key in ("target", "config", "per_channel")},
        "n_windows": len(windows),
        "all_passed": all(w["passed"] for w in windows),
        "max_abs_diff": max(w["max_abs_diff"] for w in windows),
        f"min_top{k}_overlap": min(w[f"top{k}_overlap"] for w in windows),
        "top1_same_windows": sum(w["top1_same"] for w in windows),
        "seconds": round(time.monotonic() - started, 1),
        "windows": windows,
    }
    print(json.dumps(report))
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
