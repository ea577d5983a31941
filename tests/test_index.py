"""The index answers exactly what a brute-force scan answers (and, for radius searches, what pybktree's own
``find`` answers), for random and clustered hashes, duplicates, deletes and rebuilds."""

from __future__ import annotations

import random
from collections.abc import Callable

import pybktree
from hypothesis import given, settings
from hypothesis import strategies as st

from matchdb.index import BKTreeIndex, Hit


def brute_force(
    items: dict[int, int], query: int, max_bits: int | None = None, accept: Callable[[int], bool] | None = None
) -> list[Hit]:
    """The exact answer: every item sorted by (bits, key), cut at ``max_bits``, filtered by ``accept``."""
    hits = sorted(Hit((value ^ query).bit_count(), key) for key, value in items.items())
    return [h for h in hits if (max_bits is None or h.bits <= max_bits) and (accept is None or accept(h.key))]


def clustered(rng: random.Random, nbits: int, count: int) -> list[int]:
    """Hashes in near-duplicate groups (a few bits flipped from a centre) plus exact duplicates."""
    centres = [rng.getrandbits(nbits) for _ in range(max(1, count // 8))]
    out = []
    for _ in range(count):
        value = rng.choice(centres)
        for _ in range(rng.choice([0, 0, 1, 2, 3, 6, 12])):
            value ^= 1 << rng.randrange(nbits)
        out.append(value)
    return out


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    nbits=st.sampled_from([64, 961]),
    count=st.integers(1, 300),
    radius_share=st.floats(0, 0.5),
    k=st.integers(1, 40),
)
def test_index_equals_brute_force_before_and_after_deletes(
    seed: int, nbits: int, count: int, radius_share: float, k: int
) -> None:
    rng = random.Random(seed)
    values = clustered(rng, nbits, count) if seed % 2 else [rng.getrandbits(nbits) for _ in range(count)]
    index = BKTreeIndex(nbits)
    items = dict(enumerate(values))
    index.bulk_load(items.items())
    queries = [rng.choice(values), rng.getrandbits(nbits), rng.choice(values) ^ 1]
    radius = int(radius_share * nbits)

    def check() -> None:
        assert len(index) == len(items)
        for query in queries:
            assert index.search(query, radius) == brute_force(items, query, radius)
            assert index.nearest(query, k) == brute_force(items, query)[:k]
            assert index.nearest(query, k, radius) == brute_force(items, query, radius)[:k]

    check()
    for key in rng.sample(sorted(items), len(items) // 2):
        index.remove(key)
        del items[key]
    check()
    index.rebuild()
    check()
    for key in range(count, count + 20):  # re-add, including values that are now tombstones
        items[key] = rng.choice(values)
        index.add(key, items[key])
    check()


def test_radius_search_equals_pybktree_find() -> None:
    rng = random.Random(7)
    values = clustered(rng, 64, 2000)
    reference = pybktree.BKTree(lambda a, b: (a ^ b).bit_count(), values)
    index = BKTreeIndex(64)
    index.bulk_load(enumerate(values))
    for _ in range(30):
        query = rng.choice(values) ^ (1 << rng.randrange(64))
        for radius in (0, 4, 8, 12):
            expected = {value for _, value in reference.find(query, radius)}
            found = {values[hit.key] for hit in index.search(query, radius)}
            assert found == expected


def test_ties_are_broken_by_key_also_at_the_kth_place() -> None:
    index = BKTreeIndex(64)
    for key in (5, 3, 9, 1):
        index.add(key, 0b1111)
    index.add(2, 0b0111)
    assert index.nearest(0b1111, 3) == [Hit(0, 1), Hit(0, 3), Hit(0, 5)]
    assert index.nearest(0b0111, 2) == [Hit(0, 2), Hit(1, 1)]


def test_accept_filters_before_k() -> None:
    index = BKTreeIndex(64)
    index.bulk_load((key, key) for key in range(100))
    hits = index.nearest(0, 3, accept=lambda key: key % 10 == 7)
    assert [hit.key for hit in hits] == [17, 7, 37]  # 2, 3 and 3 bits set; the tie broken by key
