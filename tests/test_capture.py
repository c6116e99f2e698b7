"""Capture and windows: real ALSA (file plugin) and real recordings, no mocks.

The central promise: one continuous stream. Over at least 60 windows the windows laid end to
end equal the input samples exactly: no gap, no duplicate, for both live sources.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent.capture import make_source, parse_arecord_list, resolve_pcm
from agent.config import AlsaCaptureConfig, ArecordCaptureConfig, FileCaptureConfig, WindowsConfig
from agent.errors import DeviceError, InputError
from agent.filesource import FileSource, recording_start
from agent.records import Chunk
from agent.windows import Windower, cut
from tests.audio import PCM_NAME, RECORDINGS, real_audio_s16, write_alsa_file_pcm

RATE = 48000
N_WINDOWS = 62
WINDOW_S = 10.0


@pytest.fixture(scope="module")
def alsa_real_audio(tmp_path_factory):
    """The real recordings at 48 kHz behind an ALSA file PCM, long enough for 62 windows + read-ahead."""
    d = tmp_path_factory.mktemp("alsa")
    audio = real_audio_s16(RATE, N_WINDOWS * WINDOW_S + 60)
    env = write_alsa_file_pcm(d, audio)
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    yield audio
    mp.undo()


async def _collect(source, n_windows: int, windows_cfg: WindowsConfig):
    source.open()
    w = Windower(windows_cfg, "t")
    out = []
    async with contextlib.aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            out.extend(w.push(chunk))
            if len(out) >= n_windows:
                source.stop()
                break
    return out[:n_windows], source


@pytest.mark.parametrize("kind", ["alsa", "arecord"])
def test_live_source_is_gap_free_over_62_windows(kind, alsa_real_audio):
    cfg = (AlsaCaptureConfig if kind == "alsa" else ArecordCaptureConfig)(pcm=PCM_NAME, sample_rate=RATE)
    windows, source = asyncio.run(_collect(make_source(cfg), N_WINDOWS, WindowsConfig(length_s=WINDOW_S)))
    assert len(windows) == N_WINDOWS
    n = int(WINDOW_S * RATE)
    expected = alsa_real_audio[: N_WINDOWS * n].astype(np.float32) / 32768.0
    got = np.concatenate([w.samples for w in windows])
    assert got.shape == expected.shape
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, f"{kind}: first differing sample at {mismatch[:1]}"
    # Timestamps follow the sample count from one anchor, keys are unique and consecutive.
    t0 = windows[0].start_time
    assert t0.tzinfo is not None
    assert [w.start_time - t0 for w in windows] == [timedelta(seconds=i * WINDOW_S) for i in range(N_WINDOWS)]
    assert [w.index for w in windows] == list(range(N_WINDOWS))
    assert len({w.key for w in windows}) == N_WINDOWS
    assert sum(w.xruns for w in windows) == 0  # no window reports lost samples
    assert abs((datetime.now(UTC) - t0).total_seconds()) < 60


def test_arecord_source_uses_one_long_lived_process(alsa_real_audio):
    src = make_source(ArecordCaptureConfig(pcm=PCM_NAME, sample_rate=RATE))
    windows, src = asyncio.run(_collect(src, 5, WindowsConfig(length_s=1)))
    cmd = src.command()
    assert "-d" not in cmd and "--duration" not in " ".join(cmd)
    assert src._proc.poll() is not None, "arecord must be terminated after stop"
    assert len(windows) == 5


def test_unknown_device_name_lists_capture_devices():
    with pytest.raises(DeviceError) as e:
        resolve_pcm(AlsaCaptureConfig(device="NoSuchMicrophone"))
    msg = str(e.value)
    assert "NoSuchMicrophone" in msg and "capture devices found" in msg and "hint:" in msg


def test_arecord_list_parsing_and_device_matching():
    text = ("**** List of CAPTURE Hardware Devices ****\n"
            "card 1: AudioMoth [AudioMoth], device 0: USB Audio [USB Audio]\n"
            "  Subdevices: 1/1\n  Subdevice #0: subdevice #0\n"
            "card 2: Device [USB PnP Sound Device], device 0: USB Audio [USB Audio]\n")
    devs = parse_arecord_list(text)
    assert [(d.card, d.card_id, d.card_name, d.device) for d in devs] == [
        (1, "AudioMoth", "AudioMoth", 0), (2, "Device", "USB PnP Sound Device", 0)]
    assert devs[0].pcm == "plughw:CARD=AudioMoth,DEV=0"


def test_alsa_open_failure_is_a_clear_device_error():
    with pytest.raises(DeviceError, match="cannot open ALSA capture PCM 'no_such_pcm'"):
        make_source(AlsaCaptureConfig(pcm="no_such_pcm")).open()
    with pytest.raises(DeviceError, match="arecord could not capture from 'no_such_pcm'"):
        asyncio.run(_collect(make_source(ArecordCaptureConfig(pcm="no_such_pcm")), 1, WindowsConfig()))


def _chunks(x: np.ndarray, rate: int, size: int, start: datetime):
    for i in range(0, len(x), size):
        yield Chunk(x[i:i + size], rate, segment_start=start if i == 0 else None)


def test_windower_hop_overlap_and_gap():
    x = np.arange(100_000, dtype=np.float32)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    over = cut(_chunks(x, 1000, 333, start), WindowsConfig(length_s=10, hop_s=5), clock_synchronised=lambda: True)
    assert [w.start_frame for w in over[:3]] == [0, 5000, 10000]
    assert all(np.array_equal(w.samples, x[w.start_frame:w.start_frame + 10000]) for w in over)
    assert len(over) == 19
    gaps = cut(_chunks(x, 1000, 777, start), WindowsConfig(length_s=2, hop_s=15), clock_synchronised=lambda: False)
    assert [w.start_frame for w in gaps] == [0, 15000, 30000, 45000, 60000, 75000, 90000]
    assert all(np.array_equal(w.samples, x[w.start_frame:w.start_frame + 2000]) for w in gaps)
    assert gaps[1].start_time == start + timedelta(seconds=15)
    assert not gaps[0].clock_synchronised


def test_new_segment_reanchors_and_drops_partial_window():
    w = Windower(WindowsConfig(length_s=1), "s", lambda: True)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    out = w.push(Chunk(np.zeros(1500, np.float32), 1000, segment_start=t0))
    assert len(out) == 1
    t1 = t0 + timedelta(hours=3)
    out = w.push(Chunk(np.ones(1000, np.float32), 1000, segment_start=t1, xruns=1))
    assert len(out) == 1 and out[0].start_time == t1 and out[0].xruns == 1 and out[0].samples.min() == 1
    assert w.discarded_frames == 500


def test_file_source_replays_real_recordings_per_file_segments():
    src = FileSource(FileCaptureConfig(path=str(RECORDINGS)))

    async def go():
        src.open()
        return [c async for c in src.chunks()]

    chunks = asyncio.run(go())
    starts = [c.segment_start for c in chunks if c.segment_start is not None]
    assert len(starts) == 9  # 8 Song Meter files + spinetail
    assert datetime(2019, 5, 22, 6, 0, tzinfo=UTC) in starts
    assert datetime(2018, 9, 19, 16, 0, tzinfo=UTC) in starts  # the renamed spinetail recording
    windows = cut(chunks, WindowsConfig(length_s=10))
    # 8 files of exactly 10 s give one window each, spinetail (19.5 s) one, its tail dropped.
    assert len(windows) == 9
    assert {w.sample_rate for w in windows} == {22000, 44100}
    assert recording_start(RECORDINGS / "S4A03895_20190522_210000.wav") == datetime(2019, 5, 22, 21, tzinfo=UTC)


def test_file_source_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="names no WAV or FLAC"):
        FileSource(FileCaptureConfig(path=str(tmp_path / "nothing*.wav"))).open()
    bad = tmp_path / "truncated.wav"
    bad.write_bytes((RECORDINGS / "spinetail_20180919_160000.wav").read_bytes()[:30])
    with pytest.raises(InputError, match="truncated.wav"):
        FileSource(FileCaptureConfig(path=str(bad))).open()
