"""Giving the allocator's freed memory back to the operating system after a large one-off transient."""
from __future__ import annotations

import ctypes
import sys


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc's `malloc_trim`); True when done. Elsewhere (macOS,
    Windows, musl) nothing happens: their allocators give large blocks back on their own or offer no call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
