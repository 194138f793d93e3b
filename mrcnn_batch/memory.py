"""Giving freed memory back to the system.

glibc's allocator keeps the pages of freed blocks for reuse: a burst of temporaries (a Parquet
reader thread's buffers, which sit in that thread's own arena; matching's pairs) stays in the
process's resident memory after they are freed, and what comes next takes fresh pages beside
them. ``malloc_trim(0)`` hands every arena's free pages back. Elsewhere (another C library) this
does nothing.
"""

from __future__ import annotations

import ctypes
from typing import Any

_trim: Any = None


def give_back_freed_memory() -> None:
    """Return the free pages the C allocator keeps to the system (a few milliseconds)."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
            _trim.argtypes, _trim.restype = [ctypes.c_size_t], ctypes.c_int
        except (AttributeError, OSError):
            _trim = False
    if _trim:
        _trim(0)
