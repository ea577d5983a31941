"""NumpyTreeIndex answers exactly what a brute-force scan answers (and, for radius searches, what pybktree's own
``find`` answers), for random and clustered hashes with exact duplicates, through deletes, re-adds, replaced
values and rebuilds. Its size limits are the constants of ``matchdb.index.tuning``: the tests also shrink them, so
that a few hundred records already make a deep pivot tree, narrow block tables, a busy delta and every fall-back
to a plain scan."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
import pybktree
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matchdb.index import HammingIndex, Hit, tuning
from matchdb.index.blocks import block_hits, build_tables
from matchdb.index.kernels import Distance, words_of_packed
from matchdb.index.numpy_tree import NumpyTreeIndex
from tests.test_index import brute_force, clustered

#: Use the filters however few the records.
# Pivot walks are never skipped here (that path is the plain scan, tested by "always-scan")
NO_SMALL_SCAN = {"SMALL_BLOCKS": (0, 0), "SMALL_NEAR": (0, 0), "SMALL_PIVOTS": (0, 0), "PIVOT_FUTILE_WALKS": 10**9}

#: Settings of the module constants: the defaults, a deep tree with a small delta, always and never scanning, and
#: many block tables with few key bits (most of each substring in the entries' extra bits) that answer long hashes
#: up to a large radius.
TUNINGS: dict[str, dict[str, object]] = {
    "default": {},
    "deep": {
        "LEAF_SIZE": 3,
        "FANOUT": 4,
        "BLOCK_BYTES": 1,
        "DELTA_MIN": 16,
        "BLOCK_TREE_MIN": 0,  # the block tables give up on long hashes at times: the pivot tree goes on
        "BLOCK_TREE_SHARE": 1.0,
        **NO_SMALL_SCAN,
    },
    "pivots": {  # no block tables for long hashes: every path of the pivot tree's k nearest
        "LEAF_SIZE": 2,
        "FANOUT": 3,
        "FIRST_LEAVES": 1,
        "BLOCK_TREE_MIN": 0,
        "BLOCK_TREE_SHARE": 0.0,
        "LINEAR_SHARE": 2.0,
        "LEAF_SCAN_SHARE": 2.0,
        **NO_SMALL_SCAN,
    },
    "tables": {
        "NEAR_SHARE": 0.2,
        "TABLE_RADIUS": 0,
        "KEY_MIN": 2,
        "KEY_SLACK": 5,
        "BLOCK_BYTES": 4,
        "BLOCK_LINEAR_SHARE": 99.0,
        "BLOCK_TREE_SHARE": 99.0,
        **NO_SMALL_SCAN,
    },
    "always-scan": {
        "LEAF_SIZE": 3,
        "FANOUT": 4,
        "LINEAR_SHARE": 0.0,
        "BLOCK_LINEAR_SHARE": 0.0,
        "BLOCK_TREE_SHARE": 0.0,
        "BLOCK_TREE_MIN": 0,
        "LEAF_SCAN_SHARE": 0.0,
        "CHUNK_ROWS": 8,  # the scans' chunk loops run too
        "WORD_CHUNK_ROWS": 16,
    },
    "never-scan": {
        "LEAF_SIZE": 3,
        "FANOUT": 3,
        "LINEAR_SHARE": 2.0,
        "BLOCK_LINEAR_SHARE": 99.0,
        "BLOCK_TREE_SHARE": 99.0,
        "LEAF_SCAN_SHARE": 2.0,
        **NO_SMALL_SCAN,
    },
}

TUNINGS["numpy-scan"] = {**TUNINGS["always-scan"], "COMPILED_SCAN": False}  # numpy's scan, not the compiled one


@contextmanager
def tuned(name: str, **extra: object) -> Iterator[None]:
    """The module constants set to ``TUNINGS[name]`` (and ``extra``) while the block runs."""
    values = {**TUNINGS[name], **extra}
    old = {key: getattr(tuning, key) for key in values}
    for key, value in values.items():
        setattr(tuning, key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            setattr(tuning, key, value)


def check(index: NumpyTreeIndex, items: dict[int, int], rng: random.Random, queries: int = 4) -> None:
    nbits = index.nbits
    assert len(index) == len(items)
    values = list(items.values())

    def accept(key: int) -> bool:
        return key % 3 != 1

    for _ in range(queries):
        if values and rng.random() < 0.7:
            query = rng.choice(values)
            for _ in range(rng.choice([0, 1, 2, 5])):
                query ^= 1 << rng.randrange(nbits)
        else:
            query = rng.getrandbits(nbits)
        radius = rng.choice([0, 1, 3, nbits // 16, nbits // 8, nbits // 3, nbits // 2, nbits, nbits + 5])
        k = rng.choice([1, 2, 5, 10, len(items) + 3])
        assert index.search(query, radius) == brute_force(items, query, radius)
        assert index.search(query, radius, accept) == brute_force(items, query, radius, accept)
        assert index.nearest(query, k) == brute_force(items, query)[:k]
        assert index.nearest(query, k, radius) == brute_force(items, query, radius)[:k]
        assert index.nearest(query, k, None, accept) == brute_force(items, query, None, accept)[:k]
        assert index.nearest(query, k, radius, accept) == brute_force(items, query, radius, accept)[:k]
        bits, keys = index.search_arrays(query.to_bytes(index.packed_bytes, "little"), radius)
        assert [Hit(b, k) for b, k in zip(bits.tolist(), keys.tolist(), strict=True)] == brute_force(
            items, query, radius
        )


@settings(max_examples=70, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    nbits=st.sampled_from([64, 961, 37, 100]),
    count=st.integers(0, 250),
    tuning=st.sampled_from(sorted(TUNINGS)),
    one_by_one=st.booleans(),
)
def test_index_equals_brute_force_through_changes(
    seed: int, nbits: int, count: int, tuning: str, one_by_one: bool
) -> None:
    rng = random.Random(seed)
    values = clustered(rng, nbits, count) if seed % 2 else [rng.getrandbits(nbits) for _ in range(count)]
    with tuned(tuning):
        index = NumpyTreeIndex(nbits)
        items = dict(enumerate(values))
        if one_by_one:
            for key, value in items.items():
                index.add(key, value)
        else:
            index.bulk_load(items.items())
        check(index, items, rng)
        for key in rng.sample(sorted(items), len(items) // 2):  # deletes (and one of a key that is not there)
            index.remove(key)
            del items[key]
        index.remove(10**9)
        check(index, items, rng)
        for key in range(count, count + 30):  # re-adds, including values that are now tombstones
            items[key] = rng.choice(values) if values else rng.getrandbits(nbits)
            index.add(key, items[key])
        for key in rng.sample(sorted(items), min(10, len(items))):  # replaced values, some with themselves
            items[key] = items[key] if rng.random() < 0.3 else rng.getrandbits(nbits)
            index.add(key, items[key])
        check(index, items, rng)
        index.rebuild()
        assert index.tombstones == 0
        check(index, items, rng)
        more = {key: rng.getrandbits(nbits) for key in range(count + 100, count + 100 + rng.randrange(0, 150))}
        index.bulk_load(more.items())  # into a non-empty index: joins the delta, the next query may rebuild
        items.update(more)
        check(index, items, rng)


@pytest.mark.parametrize("nbits", [64, 961])
@pytest.mark.parametrize("tuning", ["default", "deep", "pivots"])
def test_radius_search_equals_pybktree_find(nbits: int, tuning: str) -> None:
    """Also the k nearest against a brute-force scan: with 1,500 records in tiny leaves the pivot tree's k nearest
    reads its leaves in batches and tests the share they would keep."""
    rng = random.Random(nbits)
    values = clustered(rng, nbits, 1500)
    reference = pybktree.BKTree(lambda a, b: (a ^ b).bit_count(), values)
    with tuned(tuning):
        index = NumpyTreeIndex(nbits)
        index.bulk_load(enumerate(values))
        for _ in range(15):
            query = rng.choice(values) ^ (1 << rng.randrange(nbits))
            for radius in (0, 4, 8, 12, nbits // 20, nbits // 10):
                expected = {value for _, value in reference.find(query, radius)}
                found = {values[hit.key] for hit in index.search(query, radius)}
                assert found == expected
            items = dict(enumerate(values))
            for k in (1, 10, 300):
                assert index.nearest(query, k) == brute_force(items, query)[:k]


@pytest.mark.parametrize("nbits", [64, 961])
def test_ties_are_broken_by_key_also_at_the_kth_place(nbits: int) -> None:
    index = NumpyTreeIndex(nbits)
    for key in (5, 3, 9, 1):
        index.add(key, 0b1111)
    index.add(2, 0b0111)
    assert index.nearest(0b1111, 3) == [Hit(0, 1), Hit(0, 3), Hit(0, 5)]
    assert index.nearest(0b0111, 2) == [Hit(0, 2), Hit(1, 1)]
    index.rebuild()
    assert index.nearest(0b1111, 3) == [Hit(0, 1), Hit(0, 3), Hit(0, 5)]


@pytest.mark.parametrize("nbits", [64, 961])
def test_accept_filters_before_k(nbits: int) -> None:
    index = NumpyTreeIndex(nbits)
    index.bulk_load((key, key) for key in range(100))
    hits = index.nearest(0, 3, accept=lambda key: key % 10 == 7)
    assert [hit.key for hit in hits] == [17, 7, 37]  # 2, 3 and 3 bits set; the tie broken by key
    assert index.nearest(0, 3, accept=lambda key: False) == []


@pytest.mark.parametrize("nbits", [64, 961])
def test_empty_index(nbits: int) -> None:
    index: HammingIndex = NumpyTreeIndex(nbits)  # also checks (with mypy) that it follows the interface
    assert len(index) == 0
    assert index.search(0, nbits) == []
    assert index.nearest(0, 5) == []
    index.remove(3)
    index.rebuild()
    index.bulk_load([])
    assert index.nearest(1, 5) == []
    index.add(3, 1)
    index.remove(3)
    assert len(index) == 0
    assert index.search(1, nbits) == []
    assert index.nearest(1, 0) == []
    assert index.search(1, -1) == []


def test_packed_loading_matches_int_loading_and_later_pairs_win() -> None:
    rng = random.Random(5)
    nbits = 961
    values = [rng.getrandbits(nbits) for _ in range(300)]
    keys = [rng.randrange(0, 200) for _ in values]  # repeated keys: the later pair wins, as with add
    packed = np.array([list(v.to_bytes(121, "little")) for v in values], np.uint8)
    by_ints, by_packed, by_adds = NumpyTreeIndex(nbits), NumpyTreeIndex(nbits), NumpyTreeIndex(nbits)
    by_ints.bulk_load(zip(keys, values, strict=True))
    by_packed.bulk_load_packed(np.array(keys), packed)
    for key, value in zip(keys, values, strict=True):
        by_adds.add(key, value)
    items = dict(zip(keys, values, strict=True))
    for index in (by_ints, by_packed, by_adds):
        assert len(index) == len(items)
        for query in values[:10]:
            assert index.search(query, 300) == brute_force(items, query, 300)
            assert index.nearest(query, 7) == brute_force(items, query)[:7]


@pytest.mark.parametrize("nbits", [961, 64])
def test_keys_beyond_32_bits_are_kept_whole(nbits: int) -> None:
    """Keys are held as int32 when every one fits (half the memory); a key past 2**31 keeps them int64."""
    rng = random.Random(8)
    values = [rng.getrandbits(nbits) for _ in range(200)]
    for keys in ([*range(199), 2**31 - 1], [*range(199), 2**31], [*range(199), -(2**40)]):
        items = dict(zip(keys, values, strict=True))
        index = NumpyTreeIndex(nbits)
        index.bulk_load(items.items())
        for query in values[-3:]:
            bits, found = index.nearest_arrays(query, 5)
            assert found.dtype == np.int64
            assert [Hit(int(b), int(k)) for b, k in zip(bits, found, strict=True)] == brute_force(items, query)[:5]
            assert index.search(query, nbits // 2) == brute_force(items, query, nbits // 2)


def test_values_must_fit() -> None:
    index = NumpyTreeIndex(961)
    with pytest.raises(ValueError):
        index.add(1, 1 << 961)
    with pytest.raises(ValueError):
        index.add(1, -1)
    with pytest.raises(ValueError):
        index.bulk_load_packed(np.array([1]), np.full((1, 121), 255, np.uint8))  # bits past 961 set
    with pytest.raises(ValueError):
        index.search_arrays(b"\x00" * 8, 3)  # a phash-sized query


def test_delta_and_tombstones_are_merged_automatically() -> None:
    with tuned("deep"):
        index = NumpyTreeIndex(64)
        index.bulk_load((key, key * 7919) for key in range(100))
        for key in range(100, 200):
            index.add(key, key * 7919)
        snap = index._snap
        assert snap.delta_count <= tuning.DELTA_MIN  # the delta was merged into the tree on the way
        for key in range(150):
            index.remove(key)
        assert index.tombstones <= max(tuning.DELTA_MIN, tuning.DEAD_SHARE * index._snap.tree.size) + 1
        assert len(index) == 50
        items = {key: key * 7919 for key in range(150, 200)}
        assert index.nearest(0, 60) == brute_force(items, 0)[:60]


def test_readers_keep_answering_during_rebuilds_and_adds() -> None:
    """Queries from other threads while one thread adds and rebuilds: the stored records are always all found."""
    rng = random.Random(11)
    nbits = 961
    base = {key: rng.getrandbits(nbits) for key in range(2000)}
    index = NumpyTreeIndex(nbits)
    index.bulk_load(base.items())
    queries = [rng.choice(list(base.values())) for _ in range(20)]
    expected = [brute_force(base, q, 100) for q in queries]
    stop = threading.Event()
    failures: list[str] = []

    def read() -> None:
        while not stop.is_set():
            for query, want in zip(queries, expected, strict=True):
                got = [hit for hit in index.search(query, 100) if hit.key < 2000]
                if got != want:
                    failures.append(f"{got[:3]} != {want[:3]}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for key in range(2000, 2600):
            index.add(key, rng.getrandbits(nbits))
            if key % 200 == 0:
                index.rebuild()
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert not failures


def test_memory_per_record_is_small() -> None:
    """Both hash types' indexes of one collection together, with all their tables, within the issue's budget."""
    rng = np.random.default_rng(3)
    n = 100_000
    total = 0
    for nbits in (961, 64):
        nbytes = (nbits + 7) // 8
        packed = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
        packed[:, -1] &= (1 << (nbits - 8 * (nbytes - 1))) - 1
        index = NumpyTreeIndex(nbits)
        index.bulk_load_packed(np.arange(n), packed)
        total += index.nbytes
    assert total / n < 300


def flipped(rng: np.random.Generator, packed: npt.NDArray[np.uint8], nbits: int, flips: int) -> npt.NDArray[np.uint8]:
    """Copies of the rows of ``packed`` with ``flips`` distinct random bits of each flipped."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")
    for row in bits:
        row[rng.choice(nbits, flips, replace=False)] ^= 1
    return np.packbits(bits, axis=1, bitorder="little")


@pytest.mark.parametrize("tuning", ["default", "deep", "tables"])
def test_block_tables_find_every_record_within_the_steps_radius(tuning: str) -> None:
    """The block tables alone (no tree, no scan): steps 0..r, in one go or in rounds, find exactly the records within
    r bits, on random long and short hashes and on near-duplicate groups."""
    rng = np.random.default_rng(len(tuning))
    with tuned(tuning):
        for nbits, n in ((961, 3000), (64, 3000), (100, 500)):
            nbytes = (nbits + 7) // 8
            packed = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
            packed[:, -1] &= (1 << (nbits - 8 * (nbytes - 1))) - 1
            packed[n // 2 :] = flipped(rng, packed[: n - n // 2], nbits, 3)  # groups of two near duplicates
            words = words_of_packed(packed, (nbits + 63) // 64)
            tables = build_tables(nbits, words)
            queries = flipped(rng, packed[rng.integers(0, n, 12)], nbits, int(0.03 * nbits) + 1)
            for query in words_of_packed(queries, words.shape[1]):
                distance = Distance(query)
                everything = distance(words).astype(np.int64)
                parts = tables.query_parts(query)
                for radius in (0, 2, nbits // 40, nbits // 20, nbits // 10):
                    expected = np.flatnonzero(everything <= radius)
                    hits = block_hits(tables, words, distance, parts, (0, radius), radius, np.inf)
                    assert hits is not None
                    assert hits[0].tolist() == expected.tolist()
                    assert hits[1].tolist() == everything[expected].tolist()
                    cut = radius // 2  # two rounds: what the first finds within ``radius``, and the rest
                    first = block_hits(tables, words, distance, parts, (0, cut), radius, np.inf)
                    second = block_hits(tables, words, distance, parts, (cut + 1, radius), radius, np.inf)
                    assert first is not None and second is not None
                    assert sorted(set(first[0].tolist()) | set(second[0].tolist())) == expected.tolist()
                    assert block_hits(tables, words, distance, parts, (0, radius), radius, 0.5) is None


@pytest.mark.parametrize("tuning", ["default", "deep"])
def test_near_duplicates_of_random_long_hashes(tuning: str) -> None:
    """Uniformly random 961-bit hashes, where the pivot tree cannot prune: near-duplicate queries (3% of the bits
    flipped) within 5%, the k nearest within it and without a limit, all equal to a brute-force scan."""
    rng = np.random.default_rng(18)
    n, nbits = 40_000, 961
    packed = rng.integers(0, 256, (n, 121), dtype=np.uint8)
    packed[:, -1] &= 1
    packed[-50:] = flipped(rng, packed[:50], nbits, 20)  # a few near duplicates of each other too
    items = {key: int.from_bytes(row.tobytes(), "little") for key, row in enumerate(packed)}
    sources = rng.integers(0, n, 10)
    queries = flipped(rng, packed[sources], nbits, 29)
    with tuned(tuning):
        index = NumpyTreeIndex(nbits)
        index.bulk_load_packed(np.arange(n), packed)
        for source, row in zip(sources.tolist(), queries, strict=True):
            query = int.from_bytes(row.tobytes(), "little")
            within = brute_force(items, query, 48)
            assert within and within[0].key == source
            assert index.search(query, 48) == within
            assert index.nearest(query, 1, 48) == within[:1]
            assert index.nearest(query, 10, 48) == within[:10]
            assert index.nearest(query, 3) == brute_force(items, query)[:3]


def test_futile_pivot_walks_are_skipped_and_answers_stay_exact() -> None:
    """On random long hashes nothing prunes: the walks end in a scan, so after PIVOT_FUTILE_WALKS of them the search
    scans at once (walking every PIVOT_PROBE_EVERY th query), and a walk that pays again resumes walking."""
    rng = random.Random(28)
    items = {key: rng.getrandbits(961) for key in range(1500)}
    index = NumpyTreeIndex(961)
    index.bulk_load(list(items.items()))
    with tuned("deep", PIVOT_FUTILE_WALKS=3, PIVOT_PROBE_EVERY=4, LINEAR_SHARE=0.3, LEAF_SCAN_SHARE=0.85):
        walks = index._snap.tree.pivot.walks  # type: ignore[union-attr]
        for query in [rng.getrandbits(961) for _ in range(12)]:
            assert index.nearest(query, 5) == brute_force(items, query)[:5]
        assert walks.scanned_in_a_row >= 3 and walks.skipped > 0
        skipped = walks.skipped
        near = items[17] ^ 1  # a near copy: the block tables answer before any walk is asked
        assert index.nearest(near, 1) == [Hit(1, 17)]
        assert walks.skipped == skipped
    history = type(walks)()
    with tuned("deep", PIVOT_FUTILE_WALKS=2, PIVOT_PROBE_EVERY=3):
        decisions = []
        for ended_in_scan in [True, True, False, False, False, False]:
            decisions.append(history.worth_walking())
            if decisions[-1]:
                history.walked(ended_in_scan)
        # two futile walks, then skipped twice, the third asked walks (and pays): walking again from then on
        assert decisions == [True, True, False, False, True, True]
