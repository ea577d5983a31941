"""Give freed heap memory back to the operating system after a big, short-lived allocation.

Loading a collection's index holds the stored hashes, sort orders and build temporaries next to the finished
arrays: a peak about twice the index. glibc keeps much of what is freed afterwards in its heap (numpy's large
blocks fall under its growing mmap threshold), so a worker's resident memory stayed about 30% above what the
indexes hold. ``malloc_trim(0)`` returns those free pages; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim_function() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    return trim


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; whether the C library could be asked."""
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True
