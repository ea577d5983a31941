"""A compiled scan (numba, without the GIL, split across the cores): every row's Hamming distance to the query, at
memory speed, keeping only the rows that can be in the answer.

Why: when nothing prunes (a query with no near copy stored asks for its k nearest: the common query of a "similar
items" service), the index reads every hash. numpy's XOR + popcount writes a temporary per step and runs on one
core; FAISS's flat scan runs on one core too. Here one pass reads each row once, XOR and population count in
registers (``llvm.ctpop``, which LLVM turns into AVX-512 ``vpopcntq`` where the CPU has it), and keeps a row only
if it is within the bound: the radius, or for k nearest the k-th best distance so far, kept as a histogram of the
kept rows' distances so that ties at the k-th place are all kept (the caller breaks them by key). The rows are cut
into one range per core, each scanned by its own thread.

Without numba (or with ``NUMBA_DISABLE_JIT``), :func:`available` is False and the callers scan with numpy.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from matchdb.index import tuning
from matchdb.index.kernels import Ints, Words
from matchdb.index.liveness import Liveness

PARALLEL_ROWS = 1 << 18  # below this many rows one thread scans (a thread hand-off costs more than it saves)
_FIRST_CAPACITY = 1024  # rows kept per range before the buffers grow
_NO_STAMPS = np.empty(0, np.uint32)
_NO_ROWS = np.empty(0, np.int64)
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_threads(), thread_name_prefix="matchdb-scan")
        return _pool


@functools.cache
def popcount_intrinsic() -> Any:
    """``llvm.ctpop`` on a uint64 as a numba intrinsic (called in a kernel with the value alone); numba must be
    importable. Shared by every compiled scan."""
    from llvmlite import ir  # type: ignore[import-untyped]
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def _popcount(typingctx: Any, value: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            function = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
            return builder.call(function, args)

        return types.uint64(types.uint64), codegen

    return _popcount


def jit_available() -> bool:
    """numba is importable and not disabled (``NUMBA_DISABLE_JIT``)."""
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return not getattr(numba.config, "DISABLE_JIT", False)


def compile_kernel(function: Callable[..., Any], signature: Any) -> Callable[..., Any]:
    """``function`` compiled without the GIL for ``signature``, cached on disk where a cache folder is writable."""
    import numba

    try:
        return numba.njit(signature, cache=True, nogil=True)(function)  # type: ignore[no-any-return]
    except RuntimeError:  # no writable cache location
        return numba.njit(signature, nogil=True)(function)  # type: ignore[no-any-return]


def executor() -> ThreadPoolExecutor:
    """The scan threads (one per core), shared by every compiled scan."""
    return _executor()


def threads() -> int:
    return _threads()


@functools.cache
def _kernel() -> Callable[..., int] | None:
    """The scan kernel, compiled (or loaded from numba's cache) on first use; None without numba."""
    try:
        import numba
        from numba import types
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    if getattr(numba.config, "DISABLE_JIT", False):
        return None

    popcount = popcount_intrinsic()

    def scan(
        words: Any,
        query: Any,
        rows: Any,
        stop: int,
        stamps: Any,
        generation: int,
        k: int,
        counts: Any,
        state: Any,
        out_pos: Any,
        out_bits: Any,
    ) -> Any:
        """Rows ``state[0]..stop`` (or, when ``rows`` is not empty, the rows ``rows[state[0]..stop]``): keep
        (position, bits) of those within the bound; returns where it stopped (``stop`` when done; earlier when
        ``out_*`` are full: grow them and call again). ``state`` is [next, bound, rows kept within the bound, rows
        in ``out_*``]; ``counts`` the kept rows' histogram."""
        nwords = words.shape[1]
        step, bound, within, kept = state[0], state[1], state[2], state[3]
        capacity = out_pos.shape[0]
        dead = stamps.shape[0] > 0
        indirect = rows.shape[0] > 0
        while step < stop:
            row = rows[step] if indirect else step
            if dead and stamps[row] <= generation:
                step += 1
                continue
            bits = 0
            for word in range(nwords):
                bits += popcount(words[row, word] ^ query[word])
            if bits <= bound:
                if kept == capacity:  # first drop what the bound has passed by since; then, if still full, grow
                    fresh = 0
                    for i in range(kept):
                        if out_bits[i] <= bound:
                            out_pos[fresh] = out_pos[i]
                            out_bits[fresh] = out_bits[i]
                            fresh += 1
                    kept = fresh
                    if kept == capacity:
                        break
                out_pos[kept] = row
                out_bits[kept] = bits
                kept += 1
                counts[bits] += 1
                within += 1
                while within - counts[bound] >= k:  # the k-th best is nearer: the bound moves in
                    within -= counts[bound]
                    bound -= 1
            step += 1
        state[0], state[1], state[2], state[3] = step, bound, within, kept
        return step

    def array(dtype: Any, ndim: int = 1, readonly: bool = False) -> Any:
        return types.Array(dtype, ndim, "C", readonly=readonly)

    signature = types.int64(
        array(types.uint64, 2, True),
        array(types.uint64, 1, True),
        array(types.int64, 1, True),
        types.int64,
        array(types.uint32, 1, True),
        types.int64,
        types.int64,
        array(types.int64),
        array(types.int64),
        array(types.int64),
        array(types.int64),
    )
    try:
        compiled: Callable[..., int] = numba.njit(signature, cache=True, nogil=True)(scan)
    except RuntimeError:  # no writable cache location
        compiled = numba.njit(signature, nogil=True)(scan)
    return compiled


def available() -> bool:
    """Whether scans are compiled (numba is there and ``tuning.COMPILED_SCAN`` is on)."""
    return tuning.COMPILED_SCAN and _kernel() is not None


def _scan_range(
    words: Words, query: Words, rows: Ints, start: int, stop: int, alive: Liveness, k: int, bound: int, nbits: int
) -> tuple[Ints, Ints]:
    kernel = _kernel()
    assert kernel is not None
    stamps = alive.stamps if alive.stamps is not None and not alive.clean else _NO_STAMPS
    counts = np.zeros(nbits + 2, np.int64)
    state = np.array([start, bound, 0, 0], np.int64)
    capacity = min(_FIRST_CAPACITY, max(1, stop - start))
    out_pos, out_bits = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
    while kernel(words, query, rows, stop, stamps, alive.generation, k, counts, state, out_pos, out_bits) < stop:
        capacity *= 2
        out_pos = np.concatenate([out_pos, np.empty(capacity - len(out_pos), np.int64)])
        out_bits = np.concatenate([out_bits, np.empty(capacity - len(out_bits), np.int64)])
    kept, final = int(state[3]), int(state[1])
    pos, bits = out_pos[:kept], out_bits[:kept]
    keep = bits <= final
    return pos[keep], bits[keep]


def scan(
    words: Words,
    query: Words,
    alive: Liveness,
    nbits: int,
    bound: int,
    k: int | None = None,
    rows: Ints | None = None,
) -> tuple[Ints, Ints]:
    """(positions, bits) of the live rows within ``bound`` bits of ``query`` or, with ``k``, of those that can be
    among the k nearest (every row at most as far as the k-th, ties included), in no particular order. ``rows``:
    only these rows (positions into ``words``; sorted runs read almost as fast as a plain scan), not all of them."""
    chosen = _NO_ROWS if rows is None else np.ascontiguousarray(rows, np.int64)
    n = len(words) if rows is None else len(chosen)
    if n == 0 or bound < 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    want = n + 1 if k is None else k
    query = np.ascontiguousarray(query, np.uint64)
    parts = 1 if n < PARALLEL_ROWS else _threads()
    edges = np.linspace(0, n, parts + 1).astype(np.int64).tolist()

    def run(part: int) -> tuple[Ints, Ints]:
        return _scan_range(words, query, chosen, edges[part], edges[part + 1], alive, want, min(bound, nbits), nbits)

    results = [run(0)] if parts == 1 else list(_executor().map(run, range(parts)))
    if len(results) == 1:
        return results[0]
    pos, bits = np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])
    if k is not None and len(bits) > k:  # each range kept its own k nearest: keep those within the k-th of all
        keep = bits <= np.partition(bits, k - 1)[k - 1]
        pos, bits = pos[keep], bits[keep]
    return pos, bits
