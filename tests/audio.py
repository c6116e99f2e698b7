"""Test audio built from the real field recordings, and an ALSA ``type file`` PCM that plays it.

The recordings are scikit-maad's (BSD-3-Clause, licence in data/recordings/). An ALSA PCM of
``type file`` with ``slave.pcm "null"`` reads its ``infile`` byte for byte, faster than real
time, through the real ALSA library: the same path pyalsaaudio and ``arecord`` use for an
AudioMoth. Reading past the end of the infile returns garbage, so every fixture makes the
file longer than what a test reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "data" / "recordings"
PCM_NAME = "soundscape_test"


def real_recordings() -> list[Path]:
    """The bundled real recordings (8 Song Meter files of 10 s at 22 kHz, spinetail 19.5 s at 44.1 kHz)."""
    files = sorted(RECORDINGS.glob("*.wav"))
    assert len(files) == 9, f"bundled recordings missing in {RECORDINGS}"
    return files


def real_audio_s16(rate: int, min_seconds: float) -> np.ndarray:
    """The real recordings resampled to ``rate`` (soxr HQ), concatenated and repeated.

    Returns:
        int16 array, shape (n,), n >= min_seconds * rate.
    """
    parts = []
    for f in real_recordings():
        x, sr = sf.read(str(f), dtype="float32", always_2d=True)
        parts.append(soxr.resample(x[:, 0], sr, rate, quality="HQ"))
    one = np.concatenate(parts)
    reps = int(np.ceil(min_seconds * rate / len(one)))
    audio = np.tile(one, reps)
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype("<i2")


def write_alsa_file_pcm(dirpath: Path, samples_s16: np.ndarray) -> dict[str, str]:
    """Write ``infile.raw`` and an ALSA config defining PCM ``soundscape_test`` reading it.

    Args:
        dirpath: where the two files go.
        samples_s16: int16 array, shape (n,), mono S16_LE samples to capture.

    Returns:
        Environment variables (``ALSA_CONFIG_PATH``) that make the PCM visible to a process.
    """
    raw = dirpath / "infile.raw"
    samples_s16.astype("<i2").tofile(raw)
    conf = dirpath / "asound.conf"
    conf.write_text(
        f'pcm.{PCM_NAME} {{\n    type file\n    slave.pcm "null"\n    file "/dev/null"\n'
        f'    infile "{raw}"\n    format "raw"\n}}\n'
    )
    system = "/usr/share/alsa/alsa.conf"
    return {"ALSA_CONFIG_PATH": f"{system}:{conf}"}
