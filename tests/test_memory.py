"""matchdb.memory: the heap's free pages go back to the system after a collection's load."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from matchdb.memory import release_free_memory


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_heap_memory_is_returned_to_the_system() -> None:
    # Many mid-sized blocks come from the heap (below glibc's mmap threshold); freeing all but the last keeps the
    # heap's top in use, so glibc cannot shrink it by itself and the free pages below stay resident.
    blocks = [np.ones(16_000, np.float64) for _ in range(2_000)]  # 125 KiB each, 250 MiB in all
    keep = blocks[-1]
    del blocks
    before = _resident_bytes()
    assert release_free_memory()
    after = _resident_bytes()
    assert before - after > 100 * 2**20, (before, after)
    assert keep.sum() == 16_000
