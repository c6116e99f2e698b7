"""The kernel's NTP state (``adjtimex(2)``), read and set by the tests: what the agent must
report. Setting needs CAP_SYS_TIME (root); :func:`kernel_synchronised` puts the state back."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator


class _Timex(ctypes.Structure):
    """``struct timex`` (linux/timex.h, LP64)."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
                ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
                ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
                ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
                ("_reserved", ctypes.c_int * 11)]


_ADJ_MAXERROR, _ADJ_ESTERROR, _ADJ_STATUS, _STA_UNSYNC, _TIME_ERROR = 0x4, 0x8, 0x10, 0x40, 5
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def _adjtimex(tx: _Timex) -> int:
    state = _libc.adjtimex(ctypes.byref(tx))
    if state < 0:
        raise OSError(ctypes.get_errno(), "adjtimex")
    return state


def kernel_clock_synchronised() -> bool:
    """What the kernel says, asked outside any unit (adjtimex, read only)."""
    return _adjtimex(_Timex()) != _TIME_ERROR



@contextlib.contextmanager
def kernel_synchronised(synced: bool) -> Iterator[None]:
    """The kernel's clock marked NTP-synchronised (STA_UNSYNC cleared, maximum error 0, as
    timesyncd leaves it) or not (STA_UNSYNC set) inside the block, then put back as it was."""
    before = _Timex()
    _adjtimex(before)
    status = (before.status & ~_STA_UNSYNC) if synced else (before.status | _STA_UNSYNC)
    _adjtimex(_Timex(modes=_ADJ_STATUS | _ADJ_MAXERROR | _ADJ_ESTERROR, status=status,
                     maxerror=0 if synced else 16_000_000, esterror=0 if synced else 16_000_000))
    try:
        yield
    finally:
        _adjtimex(_Timex(modes=_ADJ_STATUS | _ADJ_MAXERROR | _ADJ_ESTERROR,
                         status=before.status, maxerror=before.maxerror, esterror=before.esterror))
