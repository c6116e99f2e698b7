"""Operating-system plumbing of the long-running service (no audio, no I/O of its own).

- :func:`pin_malloc_thresholds`: keep glibc from holding on to freed memory, so the agent's
  resident set stays near what it uses (issue 3's ≤ 400 MB target on a Raspberry Pi 4).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc ``malloc/malloc.h``): M_TRIM_THRESHOLD -1,
#: M_MMAP_THRESHOLD -3.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's static default of both thresholds, bytes (``mallopt(3)``: 128 * 1024).
GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def pin_malloc_thresholds(threshold: int = GLIBC_DEFAULT_THRESHOLD) -> dict[str, int]:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes, turning off their dynamic
    adjustment.

    Without this, glibc raises its mmap threshold each time a large block is freed (up to
    32 MiB on 64-bit, ``mallopt(3)``, "M_MMAP_THRESHOLD"), so later large buffers (numpy
    windows, features, scores) come from the heap, where fragmentation keeps them resident
    after they are freed. Measured for ``soundscape-agent run`` with the full-size int8 AST on
    this project's benchmark audio: peak RSS 474 MB without, 378 MB with, at the same CPU
    time. Call it early, before the model is loaded and threads start.

    A parameter whose environment variable (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``) or ``GLIBC_TUNABLES`` entry is set is left to it: an operator's
    explicit choice wins. On a C library other than glibc (no ``mallopt``) nothing happens.

    Args:
        threshold: bytes, > 0.

    Returns:
        The parameters set, ``{"M_MMAP_THRESHOLD": bytes, "M_TRIM_THRESHOLD": bytes}``; empty
        when nothing was set.

    Raises:
        ValueError: ``threshold`` ≤ 0.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 bytes, not {threshold}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    done: dict[str, int] = {}
    for name, param, env, tunable in (
        ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold"),
        ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold"),
    ):
        if env in os.environ or tunable in tunables:
            continue
        if mallopt(ctypes.c_int(param), ctypes.c_int(threshold)) == 1:
            done[name] = threshold
    log.debug("malloc thresholds pinned: %s", done)
    return done


__all__ = ["GLIBC_DEFAULT_THRESHOLD", "pin_malloc_thresholds"]
