"""Giving the allocator's freed memory back to the operating system after a large one-off transient."""
from __future__ import annotations

import ctypes
import functools
import sys
from typing import Callable


def trim_heap() -> bool:
    """Return the C heap's free pages to the OS (glibc's `malloc_trim`); True when done. Elsewhere (macOS,
    Windows, musl) nothing happens: their allocators give large blocks back on their own or offer no call."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, looked up once; None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim
