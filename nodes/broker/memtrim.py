"""Give freed heap memory back to the system (glibc), so RSS falls after hostile peers leave.

Why: what a broker queued to connections that never read -- replies in
libzmq's pipes, joined frames -- is freed when those connections close, but
glibc's malloc keeps freed chunks in its arenas, so the process's RSS stayed
at its peak (issue 23.2: 1.385 GB held after the peers closed).
``malloc_trim(0)`` returns free pages of every arena.  It walks the heap
(~0.02 ms on a small one, ~100 ms on a fragmented 450 MB one), so it runs only
when ``mallinfo2`` says at least ``threshold`` bytes lie free.  Elsewhere
(no glibc) both are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util

THRESHOLD = 16 * 2**20          # free heap bytes worth a trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallinfo2.restype = _MallInfo2
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def free_heap() -> int:
    """Bytes malloc holds free (0 if unknown)."""
    return int(_LIBC.mallinfo2().fordblks) if _LIBC is not None else 0


def trim(threshold: int = THRESHOLD) -> bool:
    """Return free heap pages to the system if at least ``threshold`` bytes lie free."""
    if _LIBC is None or free_heap() < threshold:
        return False
    _LIBC.malloc_trim(0)
    return True
