"""Where the int8 agent's memory goes: resident set size after each stage of a classification.

Run by ``run.py`` with the torch-free virtualenv's Python, in its own process::

    python benchmarks/memprofile.py --model EXPORT_DIR [--file-name model_quantized.onnx] --wav BENCH.wav

Stages, each reported as ``VmRSS`` and ``VmHWM`` (peak) from ``/proc/self/status``, MB:
interpreter (then glibc's malloc thresholds pinned, as ``run`` does); the agent's run-time
imports (CLI, pipeline, capture, store, sync, scipy.special, soxr, onnxruntime); the acoustics'
scipy.signal; the model loaded through
:func:`agent.analysis.classifier.load_classifier`; the first and the second 10 s window
classified. A diagnostic next to the measured peak RSS of ``soundscape-agent run``, not a
replacement for it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path


def rss_mb() -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of this process, MB (10^6 bytes)."""
    text = Path("/proc/self/status").read_text()
    return {key: round(int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024 / 1e6, 1)
            for key in ("VmRSS", "VmHWM")}


def main(argv: list[str] | None = None) -> int:
    """Measure the stages; print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--file-name", default="model_quantized.onnx")
    p.add_argument("--wav", required=True, type=Path)
    args = p.parse_args(argv)
    stages = [{"stage": "python interpreter", **rss_mb()}]
    try:  # as `soundscape-agent run` does first thing
        from agent.ops import pin_malloc_thresholds
    except ImportError:  # an agent from before it existed
        pass
    else:
        pin_malloc_thresholds()

    import numpy as np
    import onnxruntime  # noqa: F401
    import scipy.special  # noqa: F401
    import soundfile as sf
    import soxr  # noqa: F401

    import agent.capture  # noqa: F401
    import agent.cli  # noqa: F401
    import agent.pipeline  # noqa: F401
    import agent.store  # noqa: F401
    import agent.sync  # noqa: F401
    stages.append({"stage": "run-time imports (agent, numpy, scipy.special, soxr, onnxruntime)", **rss_mb()})
    try:  # the acoustics of every window (agents with acoustic indices and weighted levels)
        import agent.analysis.acoustics  # noqa: F401
    except ImportError:
        pass
    else:
        import scipy.signal  # noqa: F401  (weighting and band filters)
        stages.append({"stage": "acoustics imports (scipy.signal)", **rss_mb()})

    from agent.analysis.classifier import load_classifier
    from agent.config import OnnxClassifierConfig

    t = time.monotonic()
    classifier = load_classifier(OnnxClassifierConfig(model=str(args.model), file_name=args.file_name))
    stages.append({"stage": f"model loaded ({args.file_name})", "seconds": round(time.monotonic() - t, 2), **rss_mb()})
    audio, rate = sf.read(str(args.wav), dtype="float32", frames=int(20 * sf.info(str(args.wav)).samplerate))
    n = 10 * rate
    for i in range(2):
        t = time.monotonic()
        classifier.scores(np.ascontiguousarray(audio[i * n:(i + 1) * n]), rate)
        stages.append({"stage": f"window {i + 1} classified", "seconds": round(time.monotonic() - t, 2), **rss_mb()})
    print(json.dumps({"model": str(args.model / args.file_name), "stages": stages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
