"""The compiled geometric scan: every live row's score (the smallest Hamming distance over a query's pairs).

Why compiled: a query tries 57 (query hash, stored window) pairs per record; numpy would write a temporary per pair
(54 passes over 1M rows). The numba kernel reads each record's 304 bytes once, XOR and population count in
registers, and writes one byte per row; it releases the GIL so writers and other requests go on meanwhile, and the
rows are cut into one range per core. A numpy reference (:func:`scores_numpy`) gives the same numbers and is used
where numba is disabled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from matchdb.geometric.query import NBITS, Query
from matchdb.index.scan import compile_kernel, executor, jit_available, popcount_intrinsic, threads

Scores = npt.NDArray[np.uint8]
DEAD = 255  # score of a removed row: never within any bound
PARALLEL_ROWS = 1 << 17


@functools.cache
def _kernel() -> Callable[..., None] | None:
    if not jit_available():
        return None
    from numba import types

    popcount = popcount_intrinsic()

    def kernel(
        sigs: Any,
        ids: Any,
        start: int,
        stop: int,
        run_hash: int,
        run_lo: int,
        run_hi: int,
        hashes: Any,
        windows: Any,
        out: Any,
    ) -> None:
        npairs = hashes.shape[0]
        for row in range(start, stop):
            if ids[row] < 0:
                out[row] = 255
                continue
            best = np.uint64(64)
            for window in range(run_lo, run_hi):  # one hash against consecutive windows: vectorised
                best = min(best, popcount(sigs[row, window] ^ run_hash))
            for pair in range(npairs):
                best = min(best, popcount(sigs[row, windows[pair]] ^ hashes[pair]))
            out[row] = best

    signature = types.void(
        types.Array(types.uint64, 2, "C", readonly=True),
        types.Array(types.int64, 1, "C", readonly=True),
        types.int64,
        types.int64,
        types.uint64,
        types.int64,
        types.int64,
        types.Array(types.uint64, 1, "C", readonly=True),
        types.Array(types.int64, 1, "C", readonly=True),
        types.Array(types.uint8, 1, "C"),
    )
    return compile_kernel(kernel, signature)


def _split(query: Query) -> tuple[np.uint64, int, int, npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """The query's leading run of one hash against consecutive windows (its whole frame against every stored
    window: 37 of its pairs), which the kernel compares without indirection, and the other pairs."""
    hashes, windows = query.hashes, query.windows
    run = 0
    while run < len(hashes) and hashes[run] == hashes[0] and windows[run] == windows[0] + run:
        run += 1
    if run < 2:
        return np.uint64(0), 0, 0, hashes, windows
    lo = int(windows[0])
    return np.uint64(hashes[0]), lo, lo + run, hashes[run:], windows[run:]


def scores_numpy(sigs: npt.NDArray[np.uint64], ids: npt.NDArray[np.int64], query: Query) -> Scores:
    """The reference: the same scores with numpy (one pass per pair)."""
    best = np.full(len(sigs), NBITS, np.uint8)
    for h, w in zip(query.hashes, query.windows, strict=True):
        bits = np.bitwise_count(sigs[:, w] ^ h).astype(np.uint8)
        np.minimum(best, bits, out=best)
    best[ids < 0] = DEAD
    return best


def scores(sigs: npt.NDArray[np.uint64], ids: npt.NDArray[np.int64], count: int, query: Query) -> Scores:
    """Score of rows ``0..count`` of ``sigs`` (``DEAD`` where ``ids`` is negative)."""
    kernel = _kernel()
    if kernel is None:
        return scores_numpy(sigs[:count], ids[:count], query)
    out = np.empty(count, np.uint8)
    run_hash, run_lo, run_hi, hashes, windows = _split(query)
    hashes, windows = np.ascontiguousarray(hashes), np.ascontiguousarray(windows)
    parts = 1 if count < PARALLEL_ROWS else threads()
    edges = np.linspace(0, count, parts + 1).astype(np.int64).tolist()

    def run(part: int) -> None:
        kernel(sigs, ids, edges[part], edges[part + 1], run_hash, run_lo, run_hi, hashes, windows, out)

    if parts == 1:
        run(0)
    else:
        list(executor().map(run, range(parts)))
    return out


def select(found: Scores, bound: int, k: int | None) -> npt.NDArray[np.int64]:
    """Rows within ``bound`` bits; with ``k``, only those that can be among the k nearest (ties at the k-th kept)."""
    bound = min(bound, NBITS)
    if k is not None:
        counts = np.bincount(found, minlength=256)[: bound + 1]
        total = np.cumsum(counts)
        reached = np.flatnonzero(total >= k)
        if len(reached):
            bound = int(reached[0])
    return np.flatnonzero(found <= bound).astype(np.int64)
