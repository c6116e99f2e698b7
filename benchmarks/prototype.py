"""A faithful replica of the original prototype's analysis loop: the baseline of ``run.py``.

What the prototype did, once per second, all synchronously inside one ``async def`` (no
executor, no thread, so nothing else runs while it records or classifies):

1. ``arecord -d 1`` — a NEW arecord process per 1 s window — into a temporary WAV file;
2. ``librosa.load(tmp, sr=16000)`` (librosa's default resampler);
3. transformers' ``ASTFeatureExtractor`` with ``max_length=1024``: the 1 s clip (98 frames)
   is padded to 1024 frames, so every 1 s clip costs a full 10.24 s AST forward pass;
4. ``ASTForAudioClassification`` forward pass on PyTorch (default thread count), under
   ``torch.no_grad()``;
5. ``torch.sigmoid`` of the logits, top 5.

While steps 2-5 run, no arecord process is open, so the microphone's audio during that time
is never recorded: that is where the prototype loses audio.

Differences from the original, all instrumentation, none on the measured path:

- librosa's lazy imports are done once at start-up (:func:`warm_up_librosa`), so they count
  as load time, not as the first window's cost;
- one JSON line per event on stdout (``loaded``, ``window``, ``end``) with monotonic clock
  readings, so that ``run.py`` can time each step; the prototype printed its top 5 instead;
- SIGTERM sets a stop flag checked between windows (the original ran until killed): a
  window whose recording was cut by the end of the benchmark stream is discarded, a window
  being classified is finished first;
- the results are not written to PostgreSQL (the prototype's INSERT per window is cheap next
  to a 130 GMAC forward pass and would need a server);
- ``arecord`` gets ``--period-size=1024 --buffer-size=4096``: the benchmark's live source is
  an ALSA ``type file`` PCM reading a FIFO fed in real time (see ``run.py``), and reads of a
  whole period keep the FIFO's frames aligned. A real microphone needs no such option.

Usage (normally started by ``run.py``)::

    python benchmarks/prototype.py --model DIR --device PCM [--tmpdir DIR] [--max-windows N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

_stop = False


def _request_stop(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    global _stop
    _stop = True


def emit(event: str, **fields) -> None:
    """Print one JSON event line (with ``t``, the monotonic clock) and flush it."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def record_one_second(device: str, path: str, rate: int) -> None:
    """``arecord -d 1``: one new arecord process records 1 s of mono S16_LE into ``path``."""
    subprocess.run(
        ["arecord", "-q", "-D", device, "-d", "1", "-f", "S16_LE", "-r", str(rate), "-c", "1",
         "-t", "wav", "--period-size=1024", "--buffer-size=4096", path],
        check=True, stdin=subprocess.DEVNULL,
    )


def warm_up_librosa(tmpdir: str) -> None:
    """Decode a short silent WAV once, so librosa's lazy imports (about 2 s) count as start-up
    time rather than as the cost of the first window."""
    import librosa
    import numpy as np
    import soundfile as sf

    with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmpdir) as tmp:
        sf.write(tmp.name, np.zeros(4800, dtype=np.int16), 48000, subtype="PCM_16")
        librosa.load(tmp.name, sr=16000)


async def monitor(model_dir: str, device: str, tmpdir: str, rate: int, max_windows: int | None) -> int:
    """The prototype's loop: record 1 s, then classify it, synchronously, until stopped.

    Args:
        model_dir: an AST audio-classification model directory (``from_pretrained``).
        device: the ALSA capture PCM ``arecord -D`` opens.
        tmpdir: where the temporary WAV files go.
        rate: capture rate, Hz.
        max_windows: stop after this many windows (``None``: until SIGTERM).

    Returns:
        the number of windows classified.
    """
    import librosa
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    feature_extractor = ASTFeatureExtractor.from_pretrained(model_dir, max_length=1024)
    model = ASTForAudioClassification.from_pretrained(model_dir)
    model.eval()
    labels = model.config.id2label
    warm_up_librosa(tmpdir)
    emit("loaded", torch_threads=torch.get_num_threads())

    done = 0
    while not _stop and (max_windows is None or done < max_windows):
        with tempfile.NamedTemporaryFile(suffix=".wav", dir=tmpdir) as tmp:
            rec_start = time.monotonic()
            record_one_second(device, tmp.name, rate)
            rec_end = time.monotonic()
            if _stop:  # the stream ended during this recording: not analysed
                break
            y, sr = librosa.load(tmp.name, sr=16000)
        decoded = time.monotonic()
        inputs = feature_extractor(y, sampling_rate=sr, return_tensors="pt")  # padded to 1024 frames
        with torch.no_grad():
            logits = model(**inputs).logits
        scores = torch.sigmoid(logits)[0]
        top = torch.topk(scores, 5)
        end = time.monotonic()
        done += 1
        emit("window", index=done - 1, rec_start=rec_start, rec_end=rec_end, decoded=decoded, end=end,
             samples=int(len(y)), frames=int(inputs["input_values"].shape[1]),
             top=[[labels[int(i)], round(float(s), 4)] for s, i in zip(top.values, top.indices, strict=True)])
    emit("end", windows=done)
    return done


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring. Exit status 0."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="AST model directory")
    p.add_argument("--device", required=True, help="ALSA capture PCM for arecord -D")
    p.add_argument("--tmpdir", default=tempfile.gettempdir(), help="directory of the temporary WAV files")
    p.add_argument("--rate", type=int, default=48000, help="capture rate, Hz (default 48000)")
    p.add_argument("--max-windows", type=int, default=None)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _request_stop)
    os.makedirs(args.tmpdir, exist_ok=True)
    asyncio.run(monitor(args.model, args.device, args.tmpdir, args.rate, args.max_windows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
