"""The compiled scan (matchdb.index.scan) keeps exactly the rows a brute-force numpy scan says it must: within a
radius, or every row as near as the k-th (ties included), skipping rows dead in the snapshot's generation, on one
thread and split across threads."""

from __future__ import annotations

import numpy as np
import pytest

from matchdb.index import scan
from matchdb.index.liveness import Liveness, alive_stamps

pytestmark = pytest.mark.skipif(not scan.available(), reason="numba's JIT is off")


@pytest.mark.parametrize(("nwords", "nbits"), [(16, 961), (1, 64), (2, 100)])
@pytest.mark.parametrize("rows", [0, 1, 5, 1000, 5000])
@pytest.mark.parametrize("parallel_rows", [1 << 18, 64])
def test_scan_keeps_what_a_brute_force_scan_keeps(
    nwords: int, nbits: int, rows: int, parallel_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "PARALLEL_ROWS", parallel_rows)
    monkeypatch.setattr(scan, "_FIRST_CAPACITY", 4)  # the buffers grow and the kernel resumes
    rng = np.random.default_rng(rows * nbits)
    words = rng.integers(0, 2**63, (rows, nwords), dtype=np.uint64)
    if nbits % 64:
        words[:, -1] &= np.uint64((1 << (nbits % 64)) - 1)
    if rows > 100:
        words[rows // 2 : rows // 2 + 50] = words[3]  # ties
    query = words[min(3, rows - 1)].copy() if rows else rng.integers(0, 2**63, nwords, dtype=np.uint64)
    query[0] ^= np.uint64(7)
    distances = np.bitwise_count(words ^ query).sum(axis=1).astype(np.int64)
    stamps = alive_stamps(rows)
    dead = rng.random(rows) < 0.3
    stamps[dead] = 5
    for alive in (Liveness(), Liveness(stamps, 4, int(dead.sum())), Liveness(stamps, 5, int(dead.sum()))):
        live = np.ones(rows, np.bool_) if alive.generation < 5 else ~dead
        for k in (1, 10, 100):
            pos, bits = scan.scan(words, query, alive, nbits, nbits, k)
            assert (distances[pos] == bits).all()
            if live.any():
                kth = np.sort(distances[live])[min(k, int(live.sum())) - 1]
                assert sorted(pos.tolist()) == np.flatnonzero(live & (distances <= kth)).tolist()
            else:
                assert not len(pos)
        for radius in (0, 3, nbits // 2, nbits):
            pos, bits = scan.scan(words, query, alive, nbits, radius)
            assert sorted(pos.tolist()) == np.flatnonzero(live & (distances <= radius)).tolist()
            assert (distances[pos] == bits).all()


@pytest.mark.parametrize("parallel_rows", [1 << 18, 64])
def test_scan_of_given_rows_keeps_what_a_brute_force_scan_of_them_keeps(
    parallel_rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rows``: only those positions (runs, as the pivot tree's leaves give them), tombstones skipped."""
    monkeypatch.setattr(scan, "PARALLEL_ROWS", parallel_rows)
    monkeypatch.setattr(scan, "_FIRST_CAPACITY", 4)
    rng = np.random.default_rng(28)
    words = rng.integers(0, 2**63, (3000, 16), dtype=np.uint64)
    words[:, -1] &= np.uint64(1)
    query = words[10].copy()
    query[2] ^= np.uint64(0xFF)
    distances = np.bitwise_count(words ^ query).sum(axis=1).astype(np.int64)
    starts = np.sort(rng.choice(2900, 40, replace=False))
    chosen = np.unique(np.concatenate([np.arange(s, s + rng.integers(1, 60)) for s in starts])).astype(np.int64)
    stamps = alive_stamps(len(words))
    dead = rng.random(len(words)) < 0.2
    stamps[dead] = 5
    for alive in (Liveness(), Liveness(stamps, 5, int(dead.sum()))):
        live = chosen[~dead[chosen]] if alive.generation == 5 else chosen
        for k in (1, 10):
            pos, bits = scan.scan(words, query, alive, 961, 961, k, rows=chosen)
            assert (distances[pos] == bits).all()
            kth = np.sort(distances[live])[k - 1]
            assert sorted(pos.tolist()) == live[distances[live] <= kth].tolist()
        pos, bits = scan.scan(words, query, alive, 961, 470, rows=chosen)
        assert sorted(pos.tolist()) == live[distances[live] <= 470].tolist()
