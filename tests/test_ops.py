"""Process plumbing of the service (agent.ops): glibc malloc thresholds for ``run``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.ops import GLIBC_DEFAULT_THRESHOLD, pin_malloc_thresholds

REPO = Path(__file__).resolve().parent.parent
# glibc cannot report its thresholds, so the probe checks their effect, which is what the
# service's memory use depends on: freed 1 MB buffers go back to the OS when pinned, and stay
# resident under glibc's dynamic threshold.
PROBE = r"""
import ctypes, json, os, re, sys
from pathlib import Path
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024
if sys.argv[1] == "pin":
    from agent.ops import pin_malloc_thresholds
    done = pin_malloc_thresholds()
else:
    done = {}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
# 1) a 4 MB block freed: glibc (dynamic threshold) raises its mmap threshold to 4 MB.
p = libc.malloc(4 << 20); ctypes.memset(p, 1, 4 << 20); libc.free(p)
# 2) 60 blocks of 1 MB, touched, then freed but the last: without pinning they live on the
#    heap (below the raised threshold) and the kept one at the top pins the freed ones below it.
blocks = [libc.malloc(1 << 20) for _ in range(60)]
for b in blocks:
    ctypes.memset(b, 1, 1 << 20)
before = rss()
for b in blocks[:-1]:
    libc.free(b)
print(json.dumps({"pinned": done, "held_mb": rss() - before + 59}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**os.environ, **env})
    return json.loads(out.stdout)


@pytest.mark.skipif(not Path("/lib/x86_64-linux-gnu/libc.so.6").exists()
                    and not Path("/lib/aarch64-linux-gnu/libc.so.6").exists(), reason="glibc only")
def test_pinned_thresholds_return_freed_buffers_to_the_os():
    free_env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    kept = _probe("none", **free_env)
    pinned = _probe("pin", **free_env)
    assert pinned["pinned"] == {"M_MMAP_THRESHOLD": GLIBC_DEFAULT_THRESHOLD, "M_TRIM_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}
    assert kept["held_mb"] >= 50, kept       # glibc's dynamic threshold keeps the freed 59 MB resident
    assert pinned["held_mb"] <= 5, pinned    # pinned: they went back to the OS


def test_an_operators_malloc_environment_wins():
    out = _probe("pin", MALLOC_MMAP_THRESHOLD_="65536")
    assert out["pinned"] == {"M_TRIM_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}
    out = _probe("pin", GLIBC_TUNABLES="glibc.malloc.trim_threshold=65536")
    assert out["pinned"] == {"M_MMAP_THRESHOLD": GLIBC_DEFAULT_THRESHOLD}


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="> 0 bytes"):
        pin_malloc_thresholds(0)
